//! Unit tests of the validation rules, one per rule, asserting exact field paths.
