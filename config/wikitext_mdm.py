# WikiText-2, the padded MDM baseline of config/wikitext.py (same model and optimisation; pads to 512).
# Train: python train.py config/wikitext_mdm.py
exec(open('config/wikitext.py').read())
out_dir = 'out/wikitext_mdm'
model_type = 'mdm'
packing = False
