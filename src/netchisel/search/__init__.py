"""Search: spaces, objectives and strategies over Optuna studies."""
