# WikiText-2, the padded MDM baseline of config/wikitext.py (same model and optimisation; pads to 512).
# Train: python train.py config/wikitext_mdm.py
exec(open('config/wikitext.py').read())
out_dir = 'out/wikitext_mdm'
model_type = 'mdm'
packing = False
prior_weight = 0.0  # FlexMDM-only settings of the included config: off (train.py refuses them for the MDM)
behind_weight = 0.0
