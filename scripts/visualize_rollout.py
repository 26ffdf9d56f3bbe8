#!/usr/bin/env python
"""Visualize an imagined rollout: the same as `robofm-viz` (see robofm/viz/__main__.py).

python scripts/visualize_rollout.py checkpoint=RUN data.path=STORE episode=ep-000003 horizon=16
"""

from robofm.viz.__main__ import main

if __name__ == "__main__":
    main()
