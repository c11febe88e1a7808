"""Input sizes: which spatial sizes a network accepts (`graphcnn sizes`) and the rule behind them."""
