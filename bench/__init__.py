"""The project's benchmark (`./launch.sh bench`, or `python -m bench` from the repository root).

A tool beside the product: it drives the studio's services, pipelines and trainer and prints what it measures;
nothing in the studio imports it. `run` holds the command line and most sections, `lora_proof` the LoRA proof,
`flops` the FLOP counting and matmul peak, `store` the gallery store at scale.
"""
