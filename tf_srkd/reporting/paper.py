"""The paper's published numbers (Mishra & Sundaram, arXiv 2102.07125v2), as data.

`tf_srkd.cli.report` sets the tracked runs next to them; a test keeps them equal to
the project's shared copy of the paper's tables.
"""

#: Tables I, III-V and VI, keyed as in the shared copy (`shared/paper/paper_tables.json`).
PAPER_TABLES = {
    "table_1_teacher_accuracy_by_alpha": {
        "alpha": ["0.006", "0.008", "0.01", "0.02", "0.04", "0.08", "inf"],
        "mnist": [0.9899, 0.9911, 0.9912, 0.9897, 0.9902, 0.9903, 0.9914],
        "fashion_mnist": [0.9016, 0.8994, 0.9006, 0.9045, 0.9042, 0.9018, 0.8992],
        "cifar10": [0.8273, 0.8313, 0.8301, 0.8281, 0.831, 0.8272, 0.8325],
    },
    "tables_3_to_5_student_test_accuracy": {
        "mnist": {"conventional_kd": 0.9925, "few_shot_kd": 0.867, "meta_data": 0.9247,
                  "data_free_kd": 0.982, "zero_shot_kd": 0.9877, "significance": 0.987,
                  "regulated": 0.9859, "hybrid": 0.9804},
        "fashion_mnist": {"conventional_kd": 0.8966, "few_shot_kd": 0.725,
                          "zero_shot_kd": 0.7962, "significance": 0.8737, "regulated": 0.8892,
                          "hybrid": 0.8642},
        "cifar10": {"conventional_kd": 0.8008, "zero_shot_kd": 0.6956, "significance": 0.7079,
                    "regulated": 0.7234, "hybrid": 0.7266},
    },
    "table_6_sample_efficiency": {
        "mnist": {"regulated": [85528, 12000000], "hybrid": [250245, 12000000]},
        "fashion_mnist": {"regulated": [1385966, 12000000], "hybrid": [2096926, 12000000]},
        "cifar10": {"regulated": [4553084, 50000000], "hybrid": [4605764, 50000000]},
    },
}

#: How the paper names each dataset.
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
#: The paper's table number of each dataset's distillation results.
STUDENT_TABLES = {"mnist": "III", "fashion_mnist": "IV", "cifar10": "V"}
#: (paper key, row label, our mode or None), in the paper's row order.
METHODS = (
    ("conventional_kd", "Conventional KD", "conventional"),
    ("few_shot_kd", "Few-shot KD", None),
    ("meta_data", "KD with meta-data", None),
    ("data_free_kd", "Data-free KD", None),
    ("zero_shot_kd", "Zero-shot KD", None),
    ("significance", "Sample significance based KD", "significance"),
    ("regulated", "Regulated KD", "regulated"),
    ("hybrid", "Hybrid KD", "hybrid"),
)
#: Table VI's columns.
EFFICIENCY_MODES = ("regulated", "hybrid")
