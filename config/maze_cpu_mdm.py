# The MDM baseline of the README's demo: the same data, model, weighting, schedule and CPU-time budget as
# config/maze_cpu.py (the MDM pads: that is the method, so packing does not apply).
#   OMP_NUM_THREADS=1 python train.py config/maze_cpu_mdm.py
exec(open("config/maze_cpu.py").read())
model_type = "mdm"
out_dir = "out/maze_cpu_mdm"
packing = False
