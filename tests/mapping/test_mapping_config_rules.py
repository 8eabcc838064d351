"""Config rules the mapping engine relies on: value map keys on true/false columns, value flag splitting."""

from __future__ import annotations

import pytest

from airflow_provider_didomi_dynamics.core.grammar import FieldKind
from airflow_provider_didomi_dynamics.exceptions import ConfigError


def test_value_map_on_a_boolean_column_needs_true_false_keys(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        make_config([{"id": "new_x", "value": "consents_channels_sms_enabled", "transform": {"yes": 1, "true": 2}}])
    assert 'mappings[0].transform: channel_enabled is true/false, so its value map keys must be "true"' in str(
        caught.value
    )
    config = make_config([{"id": "new_x", "value": "consents_channels_sms_enabled", "transform": {"True": 1}}])
    assert config.mappings[0].transform.value_map == (("True", 1),)


def test_value_flags_are_split_by_the_configs_preference_ids(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        [
            {"id": "new_list", "value": "consents_purposes_p_values_contact_freq", "direction": "to_dynamics"},
            {"id": "new_w1", "value": "consents_purposes_p_values_contact_freq_week_1_enabled"},
        ]
    )
    flag = config.mappings[1].field
    assert (flag.kind, flag.preference, flag.value) == (FieldKind.PREFERENCE_VALUE_ENABLED, "contact_freq", "week_1")


def test_a_flag_and_its_whole_list_both_written_back_is_refused(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="preference contact_freq of purpose p is also written back as a whole list"):
        make_config(
            [
                {"id": "new_list", "value": "consents_purposes_p_values_contact_freq"},
                {"id": "new_w1", "value": "consents_purposes_p_values_contact_freq_week_1_enabled"},
            ]
        )
