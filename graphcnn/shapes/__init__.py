"""Input sizes: which spatial sizes a network accepts (`graphcnn sizes`), the rule behind them,
and dynamic spatial axes in exported models (`graphcnn compile --dynamic`)."""
