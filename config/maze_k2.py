# Maze planning, FlexMDM, K=2 subgoals (easy). Data: python prepare_maze.py --K=2
exec(open('config/maze.py').read())
dataset = 'maze_k2'
out_dir = 'out/maze_k2'
