"""Common words: identifiers to avoid, and the reference set `dbspec tokens --probe` compares embeddings with.

Source: hand-compiled for dbspec (no word-list package is a dependency): English function words and the
everyday nouns, verbs and adjectives that top general English frequency lists, plus the class nouns, scene and
style words DreamBooth prompts are made of. It needs no completeness: `dbspec tokens` ranks candidates by how
late the tokenizer's BPE learned them (frequency in CLIP's training text), which pushes the rest of the common
vocabulary down the list anyway.
"""

from __future__ import annotations

_TEXT = """
a an the and or but if of in on at to for from by with without about as into onto over under up down out off
is are was were be been being am do does did done have has had having will would can could shall should may
might must not no yes all any some each every both few many much more most other such only own same so than
too very just also again still then there here when where why how what which who whom whose this that these
those it its he she they we you me him her them us my your his our their i one two three four five six seven
eight nine ten first last new old good bad big small great little long short high low right left next early
young important public able man men woman women child children boy girl baby person people family friend
time year day week month night morning life world hand head face eye eyes hair body home house room door
window car road street city town country place water fire air light dark color colour red blue green yellow
black white brown gray grey pink purple orange gold silver dog dogs cat cats bird horse cow fish animal pet
puppy kitten toy doll bear robot tree flower grass sky sun moon star cloud rain snow sea beach mountain river
forest park garden food bag shoe shoes shirt dress hat glasses watch cup bowl bottle chair table bed book
phone camera picture photo photograph image painting drawing portrait art style artist render sketch anime
cartoon closeup close view background foreground front back side top bottom center full half part style
make made get got go went going come came see saw look looking take took give gave say said know think want
like love use find tell ask work seem feel try leave call keep let begin show hear play run move live sit
stand wear wearing hold holding walk walking smile smiling happy sad beautiful pretty cute nice fine high
quality detailed realistic real best photo sharp focus lighting shot wide angle lens
"""

COMMON_WORDS: frozenset[str] = frozenset(_TEXT.split())

# Words used as identifiers that already mean something strong to the model.
STRONG_PRIORS: dict[str, str] = {
    "sks": "the SKS is a rifle; the diffusers DreamBooth blog notes its users' subjects picked that up",
}
