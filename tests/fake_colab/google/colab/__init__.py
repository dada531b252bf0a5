"""Stand-in for Colab's `google.colab` (tests only): importing it is what makes a kernel look like Colab."""

from . import drive  # noqa: F401
