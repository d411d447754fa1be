# Maze planning, FlexMDM, K=12 subgoals (hard). Data: python prepare_maze.py --K=12
exec(open('config/maze.py').read())
dataset = 'maze_k12'
out_dir = 'out/maze_k12'
