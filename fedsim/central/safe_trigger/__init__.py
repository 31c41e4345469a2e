"""Safe Trigger (spec §1 A, §2.1, §3.2): teach a reasoning model to open a `<safe>` analysis block after its
reasoning on unsafe requests (SFT on its own re-presented analyses), then make the trigger correct and stable
(DPO on its own samples). The job "safe-trigger" is registered by `fedsim.central.safe_trigger.job`."""
