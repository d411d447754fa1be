# Maze, MDM baseline (g1..gK [SEP] path [PAD]...), K=2. Data: python prepare_maze.py --K=2
exec(open('config/maze.py').read())
dataset = 'maze_k2'
out_dir = 'out/maze_mdm_k2'
model_type = 'mdm'
