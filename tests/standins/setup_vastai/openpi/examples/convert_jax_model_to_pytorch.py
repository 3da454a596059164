"""Stand-in for openpi's examples/convert_jax_model_to_pytorch.py (setup_vastai test).

Checks its arguments as the real one would fail on them, then writes a real safetensors file with
the converted model's header (812 tensors, action_in_proj.weight [1024, 32], time_mlp_in.weight
[1024, 1024]); the data section is a sparse hole, so the file costs no disk.
"""
import argparse
import json
import math
import os
import struct
import sys

p = argparse.ArgumentParser()
p.add_argument("--checkpoint_dir", required=True)
p.add_argument("--config_name", required=True)
p.add_argument("--output_path", required=True)
p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
args = p.parse_args()

if args.config_name != "pi05_libero":
    print(f"ValueError: Config '{args.config_name}' not found.", flush=True)
    sys.exit(1)
params = os.path.join(args.checkpoint_dir, "params")
if not (os.path.isdir(os.path.join(params, "ocdbt.process_0")) and os.path.isfile(os.path.join(params, "commit_success.txt"))):
    print(f"FileNotFoundError: no complete orbax checkpoint under {params}", flush=True)
    sys.exit(1)
print(f"Loading JAX checkpoint from {args.checkpoint_dir} (config {args.config_name})", flush=True)

dtype, width = {"bfloat16": ("BF16", 2), "float32": ("F32", 4)}[args.precision]
shapes = {"action_in_proj.weight": [1024, 32], "time_mlp_in.weight": [1024, 1024]}
shapes.update({f"paligemma_with_expert.layers.{i}.weight": [8] for i in range(812 - len(shapes))})
header, offset = {}, 0
for name, shape in shapes.items():
    size = math.prod(shape) * width
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
blob = json.dumps(header).encode()
blob += b" " * (-len(blob) % 8)
os.makedirs(args.output_path, exist_ok=True)
out = os.path.join(args.output_path, "model.safetensors")
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    f.truncate(8 + len(blob) + offset)
print(f"Saved {len(shapes)} tensors ({args.precision}) to {out}", flush=True)
print("Model conversion completed successfully!", flush=True)
