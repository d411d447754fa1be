# Maze, MDM baseline (g1..gK [SEP] path [PAD]...), K=12. Data: python prepare_maze.py --K=12
exec(open('config/maze.py').read())
dataset = 'maze_k12'
out_dir = 'out/maze_mdm_k12'
model_type = 'mdm'
