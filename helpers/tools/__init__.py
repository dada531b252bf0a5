"""helpers.tools: the lab's own instruments, run from the command line, never from a notebook.

    python -m helpers.tools.execute notebooks/*.ipynb    make lab: the notebooks headless, with training progress
    python -m helpers.tools.bench                         make bench: the training path's speed against the naive recipe
    python -m helpers.tools.sweep                         make sweep: the learning rates the profiles use
    python -m helpers.tools.gpu_check                     make gpu-check: the T4 path on a CUDA GPU
    torchrun ... -m helpers.tools.distributed             one run trained by several processes

They live apart so that `helpers/` holds only what the notebooks call: a student following a notebook cell into the
package reads the lab, not its measuring equipment. Tools may import the notebook-facing modules; those never import
a tool (tests/test_imports.py checks both, and that no import circle forms).
"""
