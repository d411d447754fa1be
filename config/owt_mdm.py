# OpenWebText, the padded MDM baseline: the same model and optimisation as config/owt.py without
# the insertion head; pad is an ordinary token up to max_len 1024, so there is no packing.
#   torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=HOST0 --master_port=29500 \
#       train.py config/owt_mdm.py
exec(open('config/owt.py').read())
out_dir = 'out/owt_mdm'
model_type = 'mdm'
packing = False
prior_weight = 0.0  # FlexMDM-only settings of the included config: off (train.py refuses them for the MDM)
behind_weight = 0.0
