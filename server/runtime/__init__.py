"""State shared by replicas at run time: config manager, quotas, cooldowns, preferences, keys."""
