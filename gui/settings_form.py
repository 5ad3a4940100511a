"""The settings form, built from :class:`PipelineConfig`'s field metadata: one row per option with a form label."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass, replace
from pathlib import Path
from typing import Any

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QToolButton,
    QWidget,
)

from leaf_fer.realtime.settings import Option, PipelineConfig, option_fields


@dataclass(frozen=True)
class Editor:
    """One option's widget with a reader and a writer of its value."""

    widget: QWidget
    read: Callable[[], Any]
    write: Callable[[Any], None]


class SettingsForm(QWidget):
    """Edits the options of a :class:`PipelineConfig`; emits ``changed`` with the new record on every user edit.

    Fields the form does not show keep the values of the record last given to :meth:`show_config`.
    """

    changed = pyqtSignal(object)

    def __init__(self, config: PipelineConfig, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows = QFormLayout(self)
        self.rows.setContentsMargins(0, 0, 0, 0)
        self.rows.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.editors: dict[str, Editor] = {}
        for item, option in option_fields():
            if option.in_form:
                editor = self._editor(item, option)
                editor.widget.setToolTip(option.help)
                self.editors[item.name] = editor
                self.rows.addRow(option.label, editor.widget)
        self._config = config
        self.show_config(config)

    def config(self) -> PipelineConfig:
        """The record the form shows."""
        return replace(self._config, **{name: editor.read() for name, editor in self.editors.items()})

    def show_config(self, config: PipelineConfig) -> None:
        """Show ``config`` without emitting ``changed``."""
        self._config = config
        for name in self.editors:
            self._write(name, getattr(config, name))

    def set_value(self, name: str, value: Any) -> None:
        """Set one option as if the user had: ``changed`` is emitted once."""
        self._write(name, value)
        self._edited()

    def _write(self, name: str, value: Any) -> None:
        editor = self.editors[name]
        editor.widget.blockSignals(True)
        try:
            editor.write(value)
        finally:
            editor.widget.blockSignals(False)

    def _edited(self) -> None:
        self.changed.emit(self.config())

    def _editor(self, item: Field[Any], option: Option) -> Editor:
        if option.choices:
            return self._choice_editor(option)
        if option.file_filter:
            return self._file_editor(option)
        if isinstance(item.default, bool):
            box = QCheckBox()
            box.toggled.connect(self._edited)
            return Editor(box, box.isChecked, box.setChecked)
        return self._number_editor(option, integer=isinstance(item.default, int))

    def _number_editor(self, option: Option, integer: bool) -> Editor:
        """A spin box over the option's form range; a value set beyond it (on the command line) widens it."""
        low, high = option.form_range()
        spin: QSpinBox | QDoubleSpinBox
        if integer:
            spin = QSpinBox()
            low, high = int(low), int(high)
            decimals = 0
        else:
            spin = QDoubleSpinBox()
            decimals = max(0, -math.floor(math.log10(option.step)))
            spin.setDecimals(decimals)
        spin.setSingleStep(int(option.step) if integer else option.step)
        spin.setRange(low, high)
        spin.valueChanged.connect(self._edited)

        def read() -> float:
            return spin.value() if integer else round(spin.value(), decimals)

        def write(value: float) -> None:
            spin.setRange(min(low, value), max(high, value))
            spin.setValue(value)

        return Editor(spin, read, write)

    def _choice_editor(self, option: Option) -> Editor:
        combo = QComboBox()
        for choice in option.choices:
            combo.addItem(option.choice_labels.get(choice, choice), choice)
        combo.currentIndexChanged.connect(self._edited)
        return Editor(combo, combo.currentData, lambda value: combo.setCurrentIndex(max(0, combo.findData(value))))

    def _file_editor(self, option: Option) -> Editor:
        """A path field with a "…" button that opens a file dialog; empty means the default."""
        row = QWidget()
        edit = QLineEdit()
        edit.setPlaceholderText("default")
        edit.editingFinished.connect(self._edited)
        button = QToolButton()
        button.setText("…")
        button.setToolTip(f"Choose: {option.label}")

        def choose() -> None:
            start = edit.text() or str(Path.home())
            path, _ = QFileDialog.getOpenFileName(self, option.label, start, option.file_filter)
            if path:
                edit.setText(path)
                self._edited()

        button.clicked.connect(choose)
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(edit, 1)
        layout.addWidget(button)
        return Editor(row, lambda: edit.text().strip() or None, lambda value: edit.setText("" if value is None else str(value)))
