"""MetaWorld's task names and instructions, and which tasks robofm holds out of pretraining: plain data, readable
without the simulator (robofm.train checks a corpus against it; robofm.sim.metaworld, which needs MuJoCo, re-exports
it)."""

from __future__ import annotations

MT10_TASKS = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]

# Natural-language instruction per MetaWorld v3 task (the LeRobot "task" string of each frame): every task that has a
# scripted expert in metaworld.policies (all 50). They are distinct, so an episode's instruction names its task.
INSTRUCTIONS = {
    "assembly-v3": "put the nut on the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top, behind the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button from the front, behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal, over the wall",
    "plate-slide-back-side-v3": "slide the plate back into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal, around the wall",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "pull the mug with the stick",
    "stick-push-v3": "push the mug with the stick",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}
TASKS = sorted(INSTRUCTIONS)

# MetaWorld ML45's test tasks: the few-shot benchmark (issue 23) fine-tunes on them, so no pretraining corpus may hold
# them (scripts/collect_metaworld.py leaves them out, robofm-train refuses a corpus that has them).
HELD_OUT_TASKS = ["bin-picking-v3", "box-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3"]
ML45_TRAIN_TASKS = [t for t in TASKS if t not in HELD_OUT_TASKS]
HELD_OUT_INSTRUCTIONS = {INSTRUCTIONS[t]: t for t in HELD_OUT_TASKS}  # an episode's task text -> its task

# The kinds of episode scripts/collect_metaworld.py records: the scripted expert, the expert under perturbations it
# recovers from (DART), and random exploration before the expert takes over. An episode's layout["kind"] in the store
# is the index here; an episode recorded without one (any other source) is taken for a demonstration.
EPISODE_KINDS = ("expert", "dart", "explore")
NO_KIND = -1  # the kind of an episode that records none
DEMONSTRATION_KINDS = (EPISODE_KINDS.index("expert"), NO_KIND)  # the episodes whose actions a policy should imitate
