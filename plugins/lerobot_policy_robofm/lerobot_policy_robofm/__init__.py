"""robofm's policy in LeRobot: `lerobot-eval --policy.path=EXPORT` for any robofm export (see modeling_robofm).

LeRobot's `register_third_party_plugins` imports this package (the distribution's name starts with
"lerobot_policy_"), which registers the policy type "robofm"; the factory then finds `RobofmPolicy` in
modeling_robofm and `make_robofm_pre_post_processors` in processor_robofm by its naming convention.
"""

from lerobot_policy_robofm.configuration_robofm import RobofmConfig
from lerobot_policy_robofm.modeling_robofm import RobofmPolicy
from lerobot_policy_robofm.processor_robofm import make_robofm_pre_post_processors

__all__ = ["RobofmConfig", "RobofmPolicy", "make_robofm_pre_post_processors"]
