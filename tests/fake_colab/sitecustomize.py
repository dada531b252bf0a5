# Runs at interpreter start when tests/fake_colab is on PYTHONPATH: the kernel then starts with google.colab
# imported, which is how a notebook (and helpers.environment.in_colab) knows it is on Colab.
import google.colab  # noqa: F401
