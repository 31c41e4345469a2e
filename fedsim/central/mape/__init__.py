"""MAPE-Unlearn: module-aware (attention-head / FFN-filter) masks for parameter-efficient unlearning."""
