"""Solutions to the exercises of notebooks/13_fp8_hqq_kv_cache (paste into the answer cell)."""

# Exercise 1: sign 0, exponent field 0111 = 7, mantissa 010 = 2 of 8. Normal (exponent not 0), bias 7:
#   (1 + 2/8) x 2^(7 - 7) = 1.25
e4m3_value = 1.25

# Exercise 2: numbers per token = 2 (K and V) x 32 layers x 8 KV heads x 128 = 65536; x 32768 tokens = 2^31 numbers.
#   4-bit codes: 2^31 / 2 bytes = 1 GiB; a 2-byte scale and a 2-byte zero point per 64 numbers: 2^31 / 64 x 4 bytes.
numbers = 2 * 32 * 8 * 128 * 32768
kv_bytes_4bit_8b = numbers * 4 // 8 + numbers // 64 * 4

# Exercise 3: 300 lies in the binade [256, 512), where E5M2 (2 mantissa bits) has steps of 256 / 4 = 64:
#   256, 320, 384, 448. 300 is nearer 320 (20 away) than 256 (44 away).
e5m2_of_300 = 320.0
