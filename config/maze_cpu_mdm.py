# The MDM baseline of the README's demo: the same data, model and schedule as config/maze_cpu.py.
exec(open("config/maze_cpu.py").read())
model_type = "mdm"
out_dir = "out/maze_cpu_mdm"
