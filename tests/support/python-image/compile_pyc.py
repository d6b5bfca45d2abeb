# Runs under the Debian interpreter being packaged, so the bytecode matches
# it exactly (python3-minimal has no working zipfile, so make-python-image
# zips the result itself):
#   compile_pyc.py LIST OUTDIR PREFIX
# LIST holds "source.py<TAB>name.py" lines; each source is compiled to
# OUTDIR/name.pyc, a sourceless .pyc (zipimport loads it and, with no source
# beside it, never checks a timestamp). PREFIX + name is the file name
# recorded for tracebacks: where the module sits in the image.
import importlib.util
import marshal
import os
import sys

list_path, out_dir, prefix = sys.argv[1:4]
with open(list_path) as f:
    entries = [line.rstrip("\n").split("\t") for line in f]
for src, name in entries:
    with open(src, "rb") as f:
        code = compile(f.read(), prefix + name, "exec", dont_inherit=True)
    out = os.path.join(out_dir, name + "c")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        # PEP 552 header: magic, flags 0 (timestamp-based), mtime 0, size 0.
        f.write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))
print(len(entries))
