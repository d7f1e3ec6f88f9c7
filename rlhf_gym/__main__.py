"""``python -m rlhf_gym`` runs the ``rlhf-gym`` command line."""

from rlhf_gym.cli import main

raise SystemExit(main())
