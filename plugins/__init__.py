"""Built-in rlhf_gym plugins, installed as ``rlhf_gym_plugins``.

Each module registers its reward providers or algorithms through the same hooks a third-party plugin uses.
"""
