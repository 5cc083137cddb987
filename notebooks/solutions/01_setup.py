"""Solutions to the exercises of notebooks/01_setup (paste into the answer cell)."""

fp32_bytes = n_params * 4  # noqa: F821  (n_params is defined in the notebook)
embedding_fraction = model.get_input_embeddings().weight.numel() / n_params  # noqa: F821
