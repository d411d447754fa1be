# The padded MDM baseline of config/wikitext_cpu.py: the same model, data, weighting and budget (it pads to 512).
#   OMP_NUM_THREADS=1 python train.py config/wikitext_cpu_mdm.py
exec(open("config/wikitext_cpu.py").read())
out_dir = "out/wikitext_cpu_mdm"
model_type = "mdm"
packing = False
prior_weight = 0.0  # FlexMDM-only settings of the included config: off (train.py refuses them for the MDM)
behind_weight = 0.0
