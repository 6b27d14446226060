"""The progress bar (metakd/progress.py): a plain line now and then off a terminal, Lightning's bar on one,
for fit, validate, test and predict, labelled and on a chosen stream; and what ``python -m metakd fit``
shows with its progress bar on."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import write_tiny_fit_setup
from torch.utils.data import DataLoader, TensorDataset

from metakd.errors import ConfigError
from metakd.progress import StreamProgressBar, progress_bar_from_environment

# "<label>: <description>: <done>/<total> [<elapsed><<ETA>, <rate>, <metrics>]"
LINE = re.compile(
    r"(?P<desc>.+): (?P<n>\d+)/(?P<total>\d+) \[\d\d:\d\d<\d\d:\d\d, *[\d.?]+(it/s|s/it)(, .*)?\]"
)


class TinyRegression(pl.LightningModule):
    """A linear layer on random rows: 5 training batches, 2 batches for each other loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def _loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    @staticmethod
    def loader(rows: int) -> DataLoader:
        generator = torch.Generator().manual_seed(rows)
        data = TensorDataset(
            torch.randn(rows, 4, generator=generator), torch.randn(rows, 1, generator=generator)
        )
        return DataLoader(data, batch_size=4)

    def train_dataloader(self) -> DataLoader:
        return self.loader(20)

    def val_dataloader(self) -> DataLoader:
        return self.loader(8)

    def test_dataloader(self) -> DataLoader:
        return self.loader(8)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(8)


class FakeClock(pl.Callback):
    """A clock that reads ``seconds_per_batch`` x the training batches started so far (0 before any)."""

    def __init__(self, seconds_per_batch: float = 0.0) -> None:
        self.seconds_per_batch, self.now = seconds_per_batch, 0.0
        self.batches = 0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_start(self, *args: object) -> None:
        self.now = self.seconds_per_batch * self.batches
        self.batches += 1


def trainer(bar: StreamProgressBar, *callbacks: pl.Callback, max_steps: int = -1) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, max_steps=max_steps, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[*callbacks, bar],
    )  # fmt: skip


def lines(text: str) -> list[tuple[str, int, int]]:
    """(description, done, total) of every line; each line must be a whole progress line."""
    found = []
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match, line
        found.append((match["desc"], int(match["n"]), int(match["total"])))
    return found


def test_off_a_terminal_each_loop_prints_plain_lines_of_steps_done_of_total() -> None:
    out, clock = io.StringIO(), FakeClock(0.0)  # the clock stands still: only first and closing lines
    bar = StreamProgressBar(label="books/meta", stream=out, clock=clock)
    model = TinyRegression()
    run = trainer(bar, clock)
    run.fit(model)
    run.validate(model)
    run.test(model)
    run.predict(model)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert lines(text) == [
        ("books/meta: Epoch 1/2", 1, 5),  # the first step of the run
        ("books/meta: Epoch 2/2", 5, 5),  # the end of training
        ("books/meta: Validation DataLoader 0", 2, 2),
        ("books/meta: Testing DataLoader 0", 2, 2),
        ("books/meta: Predicting DataLoader 0", 2, 2),
    ]
    assert "train/loss=" in text.splitlines()[1]


def test_lines_come_at_most_every_interval() -> None:
    out, clock = io.StringIO(), FakeClock(10.0)  # training batch k starts at 10 k seconds
    trainer(StreamProgressBar(stream=out, interval=30, clock=clock), clock).fit(TinyRegression())
    # batches 0, 3, 6, 9 (0 s, 30 s, 60 s, 90 s); the last is also the end of training (no second line)
    assert lines(out.getvalue()) == [
        ("Epoch 1/2", 1, 5),
        ("Epoch 1/2", 4, 5),
        ("Epoch 2/2", 2, 5),
        ("Epoch 2/2", 5, 5),
    ]


def test_max_steps_caps_the_training_total() -> None:
    out = io.StringIO()
    trainer(StreamProgressBar(stream=out, clock=FakeClock()), max_steps=7).fit(TinyRegression())  # 5 + 2
    assert lines(out.getvalue()) == [("Epoch 1/2", 1, 5), ("Epoch 2/2", 2, 2)]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_it_is_a_bar() -> None:
    out = FakeTerminal()
    trainer(StreamProgressBar(label="cell", stream=out)).fit(TinyRegression())
    text = out.getvalue()
    assert "\r" in text  # tqdm redraws a bar in place
    assert re.search(r"\rcell: Epoch 2/2: 100%\|[█#]+\| 5/5 \[", text)
    assert "Epoch 0" not in text


def test_a_file_descriptor_or_a_path_as_the_stream(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        trainer(StreamProgressBar(stream=write_end, clock=FakeClock())).fit(TinyRegression())
        os.close(write_end)  # the bar did not close it: closing it here ends the pipe
        with os.fdopen(read_end, encoding="utf-8") as pipe:
            assert [line[:2] for line in lines(pipe.read())] == [("Epoch 1/2", 1), ("Epoch 2/2", 5)]
    except BaseException:
        os.close(write_end)
        raise
    path = tmp_path / "progress.log"
    path.write_text("earlier\n", encoding="utf-8")
    trainer(StreamProgressBar(stream=str(path), clock=FakeClock())).fit(TinyRegression())
    earlier, *rest = path.read_text(encoding="utf-8").splitlines()
    assert earlier == "earlier" and len(lines("\n".join(rest))) == 2


def test_environment_settings_and_their_errors() -> None:
    bar = progress_bar_from_environment(
        {"METAKD_PROGRESS_LABEL": "dvd/none", "METAKD_PROGRESS_INTERVAL": "5"}
    )
    assert (bar.label, bar.stream_spec, bar.throttle.interval) == ("dvd/none", None, 5.0)
    assert progress_bar_from_environment({}).throttle.interval == 30.0
    assert progress_bar_from_environment({"METAKD_PROGRESS_TERMINAL": "0"}).is_terminal() is False
    assert progress_bar_from_environment({"METAKD_PROGRESS_TERMINAL": "1"}).is_terminal() is True
    with pytest.raises(ConfigError, match="METAKD_PROGRESS_TERMINAL must be 1 .a bar. or 0 .lines."):
        progress_bar_from_environment({"METAKD_PROGRESS_TERMINAL": "yes"})
    with pytest.raises(ConfigError, match="METAKD_PROGRESS_FD must be a file descriptor number"):
        progress_bar_from_environment({"METAKD_PROGRESS_FD": "tty"})
    with pytest.raises(ConfigError, match="progress interval must be a number of seconds >= 0, got -1"):
        StreamProgressBar(interval=-1)


def test_fit_from_the_command_line_prints_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m metakd fit`` (its entry point, in this process) with its progress bar on and its output
    captured (not a terminal), labelled through the environment as a pipeline would."""
    from metakd.cli import main

    w = write_tiny_fit_setup(tmp_path)
    monkeypatch.setenv("METAKD_PROGRESS_LABEL", "teacher")
    assert main(["fit", "--config", str(w / "tiny.yaml"), "--trainer.enable_progress_bar=true"]) == 0
    stdout = capsys.readouterr().out
    assert "\r" not in stdout
    found = [line for line in stdout.splitlines() if line.startswith("teacher: ")]
    assert [entry[:3] for entry in lines("\n".join(found))] == [("teacher: Epoch 1", 1, 1)], (
        stdout
    )  # max_steps 1
