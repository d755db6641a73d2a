"""Fine-tune a pretrained ViT or DeiT with the Trainer: on one CPU, one GPU, or many GPUs and nodes.

    python scripts/finetune.py --model vit --dataset pets                  # one CPU or one GPU
    torchrun --nproc_per_node 4 scripts/finetune.py --dataset food101      # 4 GPUs of one machine (DDP)
    accelerate launch --multi_gpu scripts/finetune.py --dataset food101    # the same with accelerate
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
             --nproc_per_node 8 scripts/finetune.py --dataset food101      # 2 nodes x 8 GPUs (rank 1 alike)

It is the code of notebooks 03, 04 and 15 (``homl16.finetune``). On a GPU it uses the course's recipe
(bf16 where the GPU computes it natively, fp16 on older GPUs such as a T4, and fused AdamW). Offline it runs
on the offline stand-ins (a small ViT/DeiT from random weights; shapes labelled by shape for pets, by colour
and shape for food101) and says so. ``--per-device-batch-size``
is per process: the global batch is that times the number of processes, and each process trains on its own
share of every epoch.
"""

import argparse
import time

import torch

from homl16.data import load_food101, load_pets
from homl16.finetune import CLASSIFIERS, finetune_arguments, image_collator, load_classifier, trainer_accuracy

DATASETS = {"pets": load_pets, "food101": load_food101}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CLASSIFIERS), default="vit")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pets")
    parser.add_argument("--epochs", type=float, default=None, help="default: 3 pretrained, 8 offline")
    parser.add_argument("--per-device-batch-size", type=int, default=16)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-test-examples", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU recipe)")
    parser.add_argument("--output-dir", default="my_finetuned")
    return parser.parse_args(argv)


def first(dataset, count):
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def main(argv=None):
    args = parse_args(argv)
    # The arguments first: they set up the process group, so that one process builds the caches.
    training_args = finetune_arguments(args.output_dir, pretrained=True, epochs=args.epochs or 3,
                                       batch_size=args.per_device_batch_size, torch_compile=args.compile)
    with training_args.main_process_first(desc="dataset and checkpoint"):
        data = DATASETS[args.dataset]()
        test_split = "test" if "test" in data else "validation"
        train = first(data["train"], args.max_train_examples)
        test = first(data[test_split], args.max_test_examples)
        names = train.features["label"].names
        model, processor, pretrained = load_classifier(args.model, names)
    if not pretrained:  # the offline stand-in learns from scratch
        training_args = finetune_arguments(args.output_dir, pretrained=False, epochs=args.epochs or 8,
                                           batch_size=args.per_device_batch_size, torch_compile=args.compile)
    from transformers import Trainer

    trainer = Trainer(model=model, args=training_args, data_collator=image_collator(processor),
                      train_dataset=train, eval_dataset=test)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    accuracy = trainer_accuracy(trainer, test)
    if trainer.is_world_process_zero():
        trainer.save_model(f"{args.output_dir}/final")
        processor.save_pretrained(f"{args.output_dir}/final")
        print(f"{training_args.world_size} process(es) on {training_args.device.type}: "
              f"{trainer.state.global_step} optimizer steps, {seconds:.0f} s of training; "
              f"test accuracy {accuracy:.1%} on {len(test)} images ({len(names)} classes)")
    close_process_group()


def close_process_group():
    """Under torchrun: wait until every rank is done (rank 0 may still be saving), then close the group.
    A rank that exits with the group open can abort (SIGABRT). The pause lets gloo's worker threads
    release their last collective, which needs the GIL: a group freed before that deadlocks in its
    destructor (PyTorch 2.13 on the CPU, a few runs in ten under load)."""
    if not torch.distributed.is_initialized():
        return
    torch.distributed.barrier()
    time.sleep(0.1)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
