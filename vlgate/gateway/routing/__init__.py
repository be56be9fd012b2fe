"""Which backend takes a request (pure, no I/O), shaped like the Gateway API Inference Extension's scheduler.

affinity.py   the keys naming a request's prompt prefix (conversation, images)
holders.py    which backend last served each key (its KV cache holds the prefix)
plugins/      the policy: filters, weighted scorers in [0, 1], pickers; profile.py declares and builds them
scheduler.py  one pick: fleet -> filters -> scorers -> picker (generic), or fused.py (the default, fast)
load.py       the bounded-load rule; rotation.py the order ties are broken in; tuning.py the reloadable knobs
waiting.py    whether a request queues for its full prefix holder (a queueing decision, not a score)
balancer.py   slots, the FIFO queue, wakeups and dispatch around the picks
"""
