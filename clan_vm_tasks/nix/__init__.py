"""The Nix side: running nix, evaluating ``clanVms``, the evaluation cache, building with GC
roots, preparing VMs from flakes, and boot tests."""
