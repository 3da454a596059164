"""Stand-in for RDT's eval_sim/eval_rdt_libero.py (evaluate runbook test): no simulator, no model.

Takes seed 002's command line (--config --pretrained --text_encoder --vision_encoder --benchmark
--max_steps) plus the per-task selector the runbook's default eval command adds (--task_id,
--num_trials), checks that the config and checkpoint paths exist relative to the working
directory, as the real script would fail on them, and prints per-trial success lines in the
format training.eval_report reads. Each task has a fixed success count per 10 trials
(SUCCESSES_PER_10), spread evenly over the trials, so a table built from its output is known
exactly: N trials give floor(N * k / 10) successes.
"""
import argparse
import os
import sys
import time

# libero_90's first tasks (seed 002 lists tasks 0-2 by name) and their successes per 10 trials:
# 30% on average, inside seed 002's expected 20-50% after the data fix.
TASKS = [
    ("KITCHEN_SCENE10_close_the_top_drawer", 3),
    ("KITCHEN_SCENE10_close_drawer_and_put_bowl", 5),
    ("LIVING_ROOM_SCENE1_pick_up_book", 2),
    ("KITCHEN_SCENE3_turn_on_the_stove", 4),
    ("LIVING_ROOM_SCENE2_pick_up_the_butter_and_put_it_in_the_basket", 1),
]
SUCCESSES_PER_10 = {str(i): k for i, (_, k) in enumerate(TASKS)}


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


p = argparse.ArgumentParser()
for flag in ("--config", "--pretrained", "--text_encoder", "--vision_encoder", "--benchmark", "--task_id"):
    p.add_argument(flag, required=True)
p.add_argument("--num_trials", type=int, required=True)
p.add_argument("--max_steps", type=int, required=True)
args = p.parse_args()

for path in (args.config, args.pretrained):
    if not os.path.exists(path):
        fail(f"{path}: no such file or directory (cwd {os.getcwd()})")
if args.benchmark != "libero_90":
    fail(f"benchmark {args.benchmark!r}: this stand-in only knows libero_90")
names = [name for name, _ in TASKS]
index = int(args.task_id) if args.task_id.isdigit() else names.index(args.task_id) if args.task_id in names else -1
if not 0 <= index < len(TASKS):
    fail(f"task {args.task_id!r}: this stand-in knows libero_90 tasks 0-{len(TASKS) - 1}")
name, per_10 = TASKS[index]

print(f"Loading RDT from {args.pretrained} (text encoder {args.text_encoder}, vision encoder {args.vision_encoder})", flush=True)
print(f"Task {index}: {name}", flush=True)
successes = 0
for trial in range(1, args.num_trials + 1):
    # Trial k succeeds when floor(k * per_10 / 10) steps up: per_10 successes in every 10 trials, evenly spread.
    success = (trial * per_10) // 10 > ((trial - 1) * per_10) // 10
    successes += success
    steps = 40 + (7 * trial) % 50 if success else args.max_steps
    time.sleep(0.02)  # a rollout takes time; it lets parallel workers overlap visibly
    print(f"[eval] task={args.task_id} trial={trial}/{args.num_trials} success={int(success)} steps={steps}", flush=True)
print(f"Task {index} ({name}): success rate {100 * successes / args.num_trials:.1f}% ({successes}/{args.num_trials})", flush=True)
