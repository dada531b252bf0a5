import json
import os
import sys

log = os.environ.get("FAKE_COLAB_PIP_LOG")
if log:
    with open(log, "a") as handle:
        handle.write(json.dumps(sys.argv[1:]) + "\n")
