"""Everything kept between runs: the stat-keyed digest cache, keyed records, the patch cache
(`store`), the workspace's record of its last command (`workspace`) and its lock (`lock`).
May import: core.
"""
