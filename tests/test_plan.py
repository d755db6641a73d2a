import pytest

from homl16.plan import CPU_TRAIN_EXAMPLES, NEEDS, Machine, Needs, Plan, choose_plan, this_machine

LAPTOP = Machine("cpu", ram_free_gb=6)  # no GPU, little free RAM
WORKSTATION = Machine("cpu", ram_free_gb=100, cpu_count=16)  # no GPU, much free RAM
T4 = Machine("cuda", ram_free_gb=12, gpu_name="Tesla T4", gpu_free_gb=15, native_bf16=False)  # Colab's GPU
H100 = Machine("cuda", ram_free_gb=200, gpu_name="NVIDIA H100 80GB HBM3", gpu_free_gb=79, native_bf16=True)

VIT, BLIP2, IDEFICS = (NEEDS[i] for i in ("google/vit-base-patch16-224-in21k", "Salesforce/blip2-opt-2.7b",
                                          "HuggingFaceM4/idefics-9b-instruct"))


def test_fine_tuning_runs_the_books_recipe_on_a_gpu_in_its_half_precision():
    on_t4 = choose_plan(T4, VIT, training=True, epochs=3, examples=3680)
    assert (on_t4.run, on_t4.device, on_t4.dtype, on_t4.epochs, on_t4.max_examples) == \
        (True, "cuda", "float16", 3, None)  # a T4 only emulates bf16
    assert "the book's recipe: 3 epochs on all 3,680" in on_t4.why and "minute" in on_t4.why
    on_h100 = choose_plan(H100, VIT, training=True, epochs=3, examples=3680)
    assert (on_h100.device, on_h100.dtype, on_h100.max_examples) == ("cuda", "bfloat16", None)


@pytest.mark.parametrize("machine", [LAPTOP, WORKSTATION])
def test_fine_tuning_on_a_cpu_takes_a_small_subset_for_one_epoch_and_quotes_the_book(machine):
    plan = choose_plan(machine, VIT, training=True, epochs=3, examples=3680)
    assert (plan.run, plan.device, plan.dtype, plan.epochs, plan.max_examples) == \
        (True, "cpu", "float32", 1, CPU_TRAIN_EXAMPLES)
    assert "no GPU, so 1 epoch on a random 256 of the 3,680" in plan.why and "91.8%" in plan.why


def test_blip2_runs_in_half_precision_on_a_t4_on_a_big_cpu_in_float32_and_not_on_a_laptop():
    assert (choose_plan(T4, BLIP2).device, choose_plan(T4, BLIP2).dtype) == ("cuda", "float16")
    on_workstation = choose_plan(WORKSTATION, BLIP2)
    assert (on_workstation.device, on_workstation.dtype, on_workstation.max_examples) == \
        ("cpu", "float32", 32)
    assert choose_plan(T4, BLIP2).max_examples is None  # a GPU captions all the photos
    on_laptop = choose_plan(LAPTOP, BLIP2)
    assert not on_laptop.run and "18.7 GB of RAM in float32 (6 GB free): too big" in on_laptop.why


def test_idefics_9b_needs_a_large_gpu_and_is_never_run_on_a_cpu():
    assert (choose_plan(H100, IDEFICS).run, choose_plan(H100, IDEFICS).dtype) == (True, "bfloat16")
    for machine in (T4, LAPTOP, WORKSTATION):  # 21 GB in half precision; 9B parameters is too slow on a CPU
        assert not choose_plan(machine, IDEFICS).run
    assert "more GPU memory than the 15 GB free" in choose_plan(T4, IDEFICS).why


def test_a_small_copy_served_by_a_mirror_is_planned_as_small():
    tiny = IDEFICS.scaled(0.004)  # a 4 MB random IDEFICS on the test hub
    assert tiny.params_m < 10 and choose_plan(Machine("cpu", ram_free_gb=3), tiny).run


def test_a_download_larger_than_the_free_disk_is_skipped():
    plan = choose_plan(Machine("cuda", 50, "A100", 40, True, disk_free_gb=10), BLIP2)
    assert not plan.run and "does not fit the 10 GB free on disk" in plan.why


def test_a_plan_takes_a_random_subset_only_when_it_says_so():
    from datasets import Dataset

    data = Dataset.from_dict({"label": [i // 100 for i in range(1000)]})  # sorted by class, as on the hub
    subset = Plan(True, max_examples=256).take(data)
    assert len(subset) == 256 and len(set(subset["label"])) == 10
    assert len(Plan(True, max_examples=256).take(data, share=0.5)) == 128
    assert Plan(True).take(data) is data


def test_this_machine_measures_free_memory_and_bad_arguments_are_rejected():
    machine = this_machine()
    assert machine.device in ("cpu", "cuda", "mps")
    assert 0 < machine.ram_free_gb < 10_000 and machine.disk_free_gb > 0
    with pytest.raises(ValueError, match="a Machine and a Needs"):
        choose_plan(machine, "google/vit-base-patch16-224-in21k")
    assert isinstance(NEEDS["ethz/food101"], Needs)
