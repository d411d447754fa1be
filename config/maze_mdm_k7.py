# Maze, MDM baseline (g1..gK [SEP] path [PAD]...), K=7. Data: python prepare_maze.py --K=7
exec(open('config/maze.py').read())
dataset = 'maze_k7'
out_dir = 'out/maze_mdm_k7'
model_type = 'mdm'
