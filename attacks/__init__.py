"""Privacy attacks that read recorded runs (`fedsim.record`). The attack registry, the FKGE
triple-inference attacks and the campaign runner arrive with the attack-campaign issue."""
