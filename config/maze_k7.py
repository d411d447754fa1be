# Maze planning, FlexMDM, K=7 subgoals (medium). Data: python prepare_maze.py --K=7
exec(open('config/maze.py').read())
dataset = 'maze_k7'
out_dir = 'out/maze_k7'
