"""Console scripts: argument parsing only; each calls into the layers below."""
