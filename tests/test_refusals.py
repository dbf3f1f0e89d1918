"""The collapse guard's refusal detector: what only says "the text does not help", and what is evidence."""

import pytest

from coa.answers import is_refusal

REFUSALS = [
    "The text does not mention the password.",
    "No information about this is given in the text.",
    "Not mentioned.",
    "I don't know.",
    "There is nothing relevant in this part.",
    "There is no information about the vault.",
    "The passage doesn't provide any details about the vault.",
    "It is not mentioned in the text.",
    "No relevant information found.",
    "This part of the text contains nothing relevant.",
    "The answer cannot be determined from the text.",
    "Unknown.",
    "There is no evidence in the text about the murder.",
    "The provided text does not specify who killed him.",
    "The password is not mentioned.",
    "N/A",
    "I cannot determine the answer.",
    "The name of the dog is not given in this passage.",
    "The text provided here does not state the date. No mention of the vault.",
]

# Negations about the story are evidence: dropping them loses facts.
EVIDENCE = [
    "Macbeth does not mention the murder to his wife.",
    "There is no evidence of the murder, says Macbeth.",
    "He was not given a title.",
    "The body was not found in the castle.",
    "Macbeth cannot sleep.",
    "The witches do not tell him how.",
    "No one knows who killed Duncan, says Macduff.",
    "The king is not present at the feast.",
    "Banquo's son is not known to the murderers.",
    "This man does not tell the truth.",
    "The text does not mention the password. The password is BLUE-HARBOR-42.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", EVIDENCE)
def test_negations_about_the_story_are_not_refusals(text):
    assert not is_refusal(text)
