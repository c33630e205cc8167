"""What every pipeline shares: the stage runner that skips finished stages and records their time and
peak memory (`stages`), the extract-then-match flow (`features`), the folder lock that keeps two runs out of one
folder (`run_lock`), background image loading and its clean-up (`background`, `orphans`) and stage timing.
"""
