"""Stand-in for openpi's scripts/train_waypoint.py (setup_vastai test).

Same command line (--mode ae|vlm --config FILE [--resume]); prints seed 003 section 13's start-up
lines in its order, then `[AE]`/`[VLM] step=N/TOTAL loss=...` lines every 50 steps with a falling
loss, a little apart. Crashes like the real one would: a missing path named in the config, no wandb
key, and in VLM mode the out-of-memory of seed issue 7 when batch_size > 12 or
PYTORCH_CUDA_ALLOC_CONF is not expandable_segments:True.
"""
import argparse
import os
import re
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["ae", "vlm"], required=True)
p.add_argument("--config", required=True)
p.add_argument("--resume", action="store_true")
args = p.parse_args()

with open(args.config) as f:
    cfg = dict(re.findall(r"^(\w+):\s*(\S+)", f.read(), re.MULTILINE))
batch, total = int(cfg["batch_size"]), int(cfg["num_train_steps"])


def say(line: str, pause: float = 0.05) -> None:
    print(line, flush=True)
    time.sleep(pause)


say(f"Config file: {os.path.abspath(args.config)}")
say(f"Training mode: {args.mode}")
say(f"  DDP:                   True  (world_size={os.environ.get('WORLD_SIZE', '1')})")
say(f"  Batch size (per GPU):  {batch}")
for key in ("original_rlds_dir", "wp_indices_path", "wp_rlds_dir", "dataset_statistics_path", "pretrained_weight_path"):
    if key in cfg and not os.path.exists(cfg[key]):
        say(f"FileNotFoundError: [Errno 2] No such file or directory: '{cfg[key]}'")
        sys.exit(1)
if not os.environ.get("WANDB_API_KEY"):
    say("wandb: ERROR api_key not configured (no-tty). call wandb.login(key=[your_api_key])")
    sys.exit(1)
wandb_line = "wandb: \U0001F680 View run at https://wandb.ai/ntu-dissert/waypoint/runs/standin1"

if args.mode == "ae":
    say("WaypointAEDataset: 454 episodes, 8409 valid pairs")
    say("Loaded 811 weight tensors, skipped 1")
    say(f"Constructing tf.data.Dataset libero_object_no_noops for split train, from {cfg['original_rlds_dir']}")
    say(wandb_line)
    say("Model: 3617.8M total, 3617.8M trainable")
    first, floor = 0.912, 0.22
else:
    say(f"WaypointVLMDataset: dir={cfg['wp_rlds_dir']}, M=7, stride=4, robot=libero")
    say("PaliGemma weights loaded: 603 params, 1 missing, 0 unexpected")
    say("Model: 2923.3M total, 2923.3M trainable")
    say(wandb_line)
    say(f"Constructing tf.data.Dataset waypoint_filtered_rlds for split train, from {cfg['wp_rlds_dir']}")
    if batch > 12 or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") != "expandable_segments:True":
        say("[rank1]: Traceback (most recent call last):")
        say('[rank1]:   File "/workspace/openpi/scripts/train_waypoint.py", line 455, in train_vlm')
        say("[rank1]:     loss.backward()")
        say("[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 15.68 GiB. GPU 1 has a total "
            "capacity of 94.97 GiB of which 9.31 GiB is free. Including non-PyTorch memory, this process has "
            "85.64 GiB memory in use.")
        sys.exit(1)
    first, floor = 11.52, 4.1

tag = args.mode.upper()
loss, step = first, 0
deadline = time.time() + 120  # training "goes on" until the test stops its tmux server
while step <= total and time.time() < deadline:
    say(f"[{tag}] step={step}/{total} loss={loss:.4f} lr=1.00e-07 gnorm=1.02 sps=0.1 gpu=0.0GB eta=0min",
        0.15 if step < 200 else 1.0)
    loss = floor + (loss - floor) * 0.6
    step += 50
