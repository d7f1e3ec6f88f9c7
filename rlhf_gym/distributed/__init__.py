"""Scale-out: data-parallel learners (torch.distributed) and Ray rollout and reward actors.

Each actor role is a thin wrapper around the same in-process class the single-process path uses, so both paths
run the same code and tests can compare them.
"""
