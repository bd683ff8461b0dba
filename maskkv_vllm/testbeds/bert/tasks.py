"""Infilling tasks for the real pretrained BERT mask predictors (no network needed).

- ``rxn`` (rxnfp's reaction-SMILES BERT): a prompt of other reactions, each ended
  by ``[SEP]``, then the query's reactants and ``>>``; the canvas is the masked
  product, unmasked one token per step.
- ``ab`` (AntiBERTy): a prompt of other antibody heavy chains, each ended by
  ``[SEP]``, then the query chain without its last residues; the canvas is those
  residues (the end of CDR3 and framework 4).

The canvas is exactly as long as the hidden span and nothing follows it (the models
saw a ``[SEP]`` after every training sequence; a canvas with one more slot for it
does worse, the models close it early); the sampler cuts an answer at a predicted
``[SEP]``, which then loses the positions it did not reach. Context from other
sequences is out of distribution for both models (each saw one sequence per row):
AntiBERTy's accuracy collapses with it, so its task runs on single chains by default.
Scores: token accuracy of
the recovered span against the truth, and exact match.

The reactions and sequences are written out below (neither wheel ships examples):
textbook reactions (esterification, amide coupling, Suzuki, Buchwald, SNAr,
protections ...) in reaction SMILES, not canonicalised by RDKit; heavy-chain
variable domains of marketed antibodies as published in their INN / patent
records, plus human germline V genes (IMGT) joined to a CDR3 and IGHJ4.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from maskkv_vllm.eviction.registry import policy_evicts
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.testbeds.bert.tokenizers import VocabTokenizer

REACTIONS = (
    "CC(=O)O.CCO>>CCOC(C)=O",
    "CO.O=C(O)c1ccccc1>>COC(=O)c1ccccc1",
    "NCc1ccccc1.O=C(O)c1ccccc1>>O=C(NCc1ccccc1)c1ccccc1",
    "CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1",
    "Brc1ccccc1.OB(O)c1ccccc1>>c1ccc(-c2ccccc2)cc1",
    "COc1ccc(Br)cc1.OB(O)c1ccccc1>>COc1ccc(-c2ccccc2)cc1",
    "CC(C)(C)OC(=O)OC(=O)OC(C)(C)C.NCCO>>CC(C)(C)OC(=O)NCCO",
    "CC(C)(C)OC(=O)NC1CCNCC1.O=C(O)C(F)(F)F>>NC1CCNCC1",
    "NC1CCCCC1.O=Cc1ccccc1>>c1ccc(CNC2CCCCC2)cc1",
    "BrCc1ccccc1.Oc1ccccc1>>c1ccc(COc2ccccc2)cc1",
    "O=[N+]([O-])O.c1ccccc1>>O=[N+]([O-])c1ccccc1",
    "Cc1ccc([N+](=O)[O-])cc1>>Cc1ccc(N)cc1",
    "COC(=O)c1ccc(Cl)cc1>>O=C(O)c1ccc(Cl)cc1",
    "Cc1ccc(S(=O)(=O)Cl)cc1.NCc1ccccc1>>Cc1ccc(S(=O)(=O)NCc2ccccc2)cc1",
    "C1COCCN1.Cc1ccc(Br)cc1>>Cc1ccc(N2CCOCC2)cc1",
    "CC(=O)c1ccccc1.C[Mg]Br>>CC(C)(O)c1ccccc1",
    "O=C(c1ccccc1)c1ccccc1>>OC(c1ccccc1)c1ccccc1",
    "COc1ccc(CO)cc1>>COc1ccc(C=O)cc1",
    "C#Cc1ccccc1.Ic1ccccc1>>C(#Cc1ccccc1)c1ccccc1",
    "C=CC(=O)OC.Ic1ccccc1>>COC(=O)C=Cc1ccccc1",
    "CC(=O)OC(C)=O.OCc1ccccc1>>CC(=O)OCc1ccccc1",
    "CC(=O)OC(C)=O.O=C(O)c1ccccc1O>>CC(=O)Oc1ccccc1C(=O)O",
    "CC(=O)OC(C)=O.Nc1ccc(O)cc1>>CC(=O)Nc1ccc(O)cc1",
    "C1CCNCC1.O=[N+]([O-])c1ccc(F)cc1>>O=[N+]([O-])c1ccc(N2CCCCC2)cc1",
    "BrCCc1ccccc1.C1COCCN1>>c1ccc(CCN2CCOCC2)cc1",
    "NCc1ccccc1.O=C=Nc1ccccc1>>O=C(NCc1ccccc1)Nc1ccccc1",
    "NCC(=O)O.O=C(Cl)OCc1ccccc1>>O=C(O)CNC(=O)OCc1ccccc1",
    "CS(=O)(=O)Cl.OCCc1ccccc1>>CS(=O)(=O)OCCc1ccccc1",
    "Cc1ccccc1.O=C1CCC(=O)N1Br>>BrCc1ccccc1",
    "CC(=O)Cl.COc1ccccc1>>COc1ccc(C(C)=O)cc1",
    "CN(C)CCN.COC(=O)c1ccccn1>>CN(C)CCNC(=O)c1ccccn1",
    "N#Cc1ccccc1>>NC(=O)c1ccccc1",
    "N#CCc1ccccc1>>NCCc1ccccc1",
    "Brc1cccnc1.OB(O)c1ccc(F)cc1>>Fc1ccc(-c2cccnc2)cc1",
    "Nc1ccc(Cl)cc1.O=C(O)C1CCCCC1>>O=C(Nc1ccc(Cl)cc1)C1CCCCC1",
    "CCOC(=O)c1ccccc1>>OCc1ccccc1",
    "O=C(O)c1ccc([N+](=O)[O-])cc1.O=S(Cl)Cl>>O=C(Cl)c1ccc([N+](=O)[O-])cc1",
    "CC(C)(C)[Si](C)(C)Cl.OCCCO>>CC(C)(C)[Si](C)(C)OCCCO",
    "Cc1ccc(S(=O)(=O)Cl)cc1.OC1CCCC1>>Cc1ccc(S(=O)(=O)OC2CCCC2)cc1",
    "CI.Oc1ccc(Br)cc1>>COc1ccc(Br)cc1",
    "CNC.O=C(Cl)c1ccccc1>>CN(C)C(=O)c1ccccc1",
    "C=Cc1ccccc1>>CCc1ccccc1",
    "CCBr.Sc1ccccc1>>CCSc1ccccc1",
    "CN.O=C(O)CCc1ccccc1>>CNC(=O)CCc1ccccc1",
)
"""Reaction SMILES ``reactants>>product``, written by hand, then put in rxnfp's
training form once with RDKit (canonical molecules, precursors sorted)."""

IGHJ4 = "WGQGTLVTVSS"
ANTIBODIES = (
    (
        "trastuzumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISA"
        "DTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
    ),
    (
        "adalimumab",
        "EVQLVESGGGLVQPGRSLRLSCAASGFTFDDYAMHWVRQAPGKGLEWVSAITWNSGHIDYADSVEGRFTISR"
        "DNAKNSLYLQMNSLRAEDTAVYYCAKVSYLSTASSLDYWGQGTLVTVSS",
    ),
    (
        "pertuzumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGFTFTDYTMDWVRQAPGKGLEWVADVNPNSGGSIYNQRFKGRFTLSV"
        "DRSKNTLYLQMNSLRAEDTAVYYCARNLGPSFYFDYWGQGTLVTVSS",
    ),
    (
        "bevacizumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGYTFTNYGMNWVRQAPGKGLEWVGWINTYTGEPTYAADFKRRFTFSL"
        "DTSKSTAYLQMNSLRAEDTAVYYCAKYPHYYGSSHWYFDVWGQGTLVTVSS",
    ),
    (
        "omalizumab",
        "EVQLVESGGGLVQPGGSLRLSCAVSGYSITSGYSWNWIRQAPGKGLEWVASITYDGSTNYNPSVKGRITISR"
        "DDSKNTFYLQMNSLRAEDTAVYYCARGSHYFGHWHFAVWGQGTLVTVSS",
    ),
    (
        "pembrolizumab",
        "QVQLVQSGVEVKKPGASVKVSCKASGYTFTNYYMYWVRQAPGQGLEWMGGINPSNGGTNFNEKFKNRVTLTT"
        "DSSTTTAYMELKSLQFDDTAVYYCARRDYRFDMGFDYWGQGTTVTVSS",
    ),
    (
        "nivolumab",
        "QVQLVESGGGVVQPGRSLRLDCKASGITFSNSGMHWVRQAPGKGLEWVAVIWYDGSKRYYADSVKGRFTISR"
        "DNSKNTLFLQMNSLRAEDTAVYYCATNDDYWGQGTLVTVSS",
    ),
    (
        "rituximab",
        "QVQLQQPGAELVKPGASVKMSCKASGYTFTSYNMHWVKQTPGRGLEWIGAIYPGNGDTSYNQKFKGKATLTA"
        "DKSSSTAYMQLSSLTSEDSAVYYCARSTYYGGDWYFNVWGAGTTVTVSA",
    ),
    (
        "cetuximab",
        "QVQLKQSGPGLVQPSQSLSITCTVSGFSLTNYGVHWVRQSPGKGLEWLGVIWSGGNTDYNTPFTSRLSINKD"
        "NSKSQVFFKMNSLQSNDTAIYYCARALTYYDYEFAYWGQGTLVTVSA",
    ),
    (
        "infliximab",
        "EVKLEESGGGLVQPGGSMKLSCVASGFIFSNHWMNWVRQSPEKGLEWVAEIRSKSINSATHYAESVKGRFTI"
        "SRDDSKSAVYLQMTDLRTEDTGVYYCSRNYYGSTYDYWGQGTTLTVSS",
    ),
    (
        "ipilimumab",
        "QVQLVESGGGVVQPGRSLRLSCAASGFTFSSYTMHWVRQAPGKGLEWVTFISYDGNNKYYADSVKGRFTISR"
        "DNSKNTLYLQMNSLRAEDTAIYYCARTGWLGPFDYWGQGTLVTVSS",
    ),
    (
        "atezolizumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGFTFSDSWIHWVRQAPGKGLEWVAWISPYGGSTYYADSVKGRFTISA"
        "DTSKNTAYLQMNSLRAEDTAVYYCARRHWPGGFDYWGQGTLVTVSS",
    ),
    (
        "durvalumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGFTFSRYWMSWVRQAPGKGLEWVANIKQDGSEKYYVDSVKGRFTISR"
        "DNAKNSLYLQMNSLRAEDTAVYYCAREGGWFGELAFDYWGQGTLVTVSS",
    ),
    (
        "ustekinumab",
        "EVQLVQSGAEVKKPGESLKISCKGSGYSFTTYWLGWVRQMPGKGLDWIGIMSPVDSDIRYSPSFQGQVTMSV"
        "DKSITTAYLQWNSLKASDTAMYYCARRRPGQGYFDFWGQGTLVTVSS",
    ),
    (
        "denosumab",
        "EVQLLESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSGITGSGGSTYYADSVKGRFTISR"
        "DNSKNTLYLQMNSLRAEDTAVYYCAKDPGTTVIMSWFDPWGQGTLVTVSS",
    ),
    (
        "secukinumab",
        "EVQLVESGGGLVQPGGSLRLSCAASGFTFSNYWMNWVRQAPGKGLEWVAAINQDGSEKYYVGSVKGRFTISR"
        "DNAKNSLYLQMNSLRVEDTAVYYCVRDYYDILTDYYIHYWYFDLWGRGTLVTVSS",
    ),
    (
        "palivizumab",
        "QVTLRESGPALVKPTQTLTLTCTFSGFSLSTSGMSVGWIRQPPGKALEWLADIWWDDKKDYNPSLKSRLTIS"
        "KDTSKNQVVLKVTNMDPADTATYYCARSMITNWYFDVWGAGTTVTVSS",
    ),
    (
        "panitumumab",
        "QVQLQESGPGLVKPSETLSLTCTVSGGSVSSGDYYWTWIRQSPGKGLEWIGHIYYSGNTNYNPSLKSRLTIS"
        "IDTSKTQFSLKLSSVTAADTAIYYCVRDRVTGAFDIWGQGTMVTVSS",
    ),
    (
        "IGHV1-69",
        "QVQLVQSGAEVKKPGSSVKVSCKASGGTFSSYAISWVRQAPGQGLEWMGGIIPIFGTANYAQKFQGRVTITA"
        "DESTSTAYMELSSLRSEDTAVYYCARDRGYSSGWYFDY" + IGHJ4,
    ),
    (
        "IGHV3-23",
        "EVQLLESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISR"
        "DNSKNTLYLQMNSLRAEDTAVYYCAKDRGYSGYDYFDY" + IGHJ4,
    ),
    (
        "IGHV4-34",
        "QVQLQQWGAGLLKPSETLSLTCAVYGGSFSGYYWSWIRQPPGKGLEWIGEINHSGSTNYNPSLKSRVTISVD"
        "TSKNQFSLKLSSVTAADTAVYYCARGGYSSSWYFDY" + IGHJ4,
    ),
    (
        "IGHV1-2",
        "QVQLVQSGAEVKKPGASVKVSCKASGYTFTGYYMHWVRQAPGQGLEWMGWINPNSGGTNYAQKFQGRVTMTR"
        "DTSISTAYMELSRLRSDDTAVYYCAREGYSSGWYFDY" + IGHJ4,
    ),
    (
        "IGHV3-30",
        "QVQLVESGGGVVQPGRSLRLSCAASGFTFSSYGMHWVRQAPGKGLEWVAVISYDGSNKYYADSVKGRFTISR"
        "DNSKNTLYLQMNSLRAEDTAVYYCAKDGYNYGYYFDY" + IGHJ4,
    ),
)
"""(name, heavy-chain variable domain) pairs."""

TASKS = ("rxn", "ab")


@dataclass(frozen=True)
class BertSample:
    """One infilling query: prompt ids, then a canvas of ``len(truth)`` masks."""

    task: str
    name: str
    prompt_ids: list[int]
    truth_ids: list[int]
    context: list[str] = field(default_factory=list)
    """Names of the sequences placed before the query (distractor context)."""

    @property
    def gen_length(self) -> int:
        return len(self.truth_ids)

    def params(self, **kv) -> SamplingParams:
        """One token unmasked per step over one block, greedy."""
        n = self.gen_length
        return SamplingParams(gen_length=n, block_length=n, steps=n, **kv)


def _context_ids(
    tok: VocabTokenizer,
    pool: Sequence[tuple[str, str]],
    rng: random.Random,
    room: int,
) -> tuple[list[int], list[str]]:
    """Whole ``text [SEP]`` entries from a shuffled pool until ``room`` is filled."""
    ids: list[int] = []
    names: list[str] = []
    order = list(pool)
    rng.shuffle(order)
    for name, text in order:
        piece = [*tok.tokenize(text), tok.sep_token_id]
        if len(ids) + len(piece) > room:
            continue
        ids += piece
        names.append(name)
    return ids, names


def _checked(tok: VocabTokenizer, text: str) -> list[int]:
    ids = tok.tokenize(text)
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        raise ValueError(f"{text!r} has tokens outside the vocabulary")
    return ids


def make_samples(
    task: str,
    tokenizer: VocabTokenizer,
    num_samples: int | None = None,
    max_len: int = 512,
    context: bool = True,
    canvas_residues: int = 18,
    seed: int = 0,
) -> list[BertSample]:
    """Queries of ``task`` ("rxn" or "ab"), one per reaction / chain (cycled).

    Args:
        max_len: prompt + canvas stay within this (the models' 512 positions).
        context: fill the prompt with other reactions / chains (never the query).
        canvas_residues: "ab": masked residues at the end of the chain.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    tok = tokenizer
    if task == "rxn":
        items = [(f"rxn{i:02d}", r) for i, r in enumerate(REACTIONS)]
    else:
        items = list(ANTIBODIES)
    n = len(items) if num_samples is None else num_samples
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        name, text = items[i % len(items)]
        if task == "rxn":
            reactants, product = text.split(">>")
            query = _checked(tok, reactants + ">>")
            truth = _checked(tok, product)
        else:
            query = _checked(tok, text[:-canvas_residues])
            truth = _checked(tok, text[-canvas_residues:])
        room = max_len - 1 - len(query) - len(truth)
        if room < 0:
            raise ValueError(f"{name} does not fit in {max_len} positions")
        ctx_ids, ctx_names = [], []
        if context:
            others = [it for it in items if it[0] != name]
            ctx_ids, ctx_names = _context_ids(tok, others, rng, room)
        prompt = [tok.cls_token_id, *ctx_ids, *query]
        samples.append(BertSample(task, name, prompt, truth, ctx_names))
    return samples


def score(token_ids: Sequence[int], truth_ids: Sequence[int]) -> tuple[float, bool]:
    """(share of truth positions recovered, exact match); a cut answer loses the
    positions it does not reach, extra tokens make it inexact."""
    hits = sum(a == b for a, b in zip(token_ids, truth_ids, strict=False))
    return hits / len(truth_ids), list(token_ids) == list(truth_ids)


def edit_similarity(token_ids: Sequence[int], truth_ids: Sequence[int]) -> float:
    """1 - Levenshtein distance / max length: forgives a span shifted by one token,
    which position-wise accuracy scores near zero."""
    a, b = list(token_ids), list(truth_ids)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b), 1)


@dataclass
class TaskResult:
    accuracy: float
    exact: float
    per_sample: list[float]
    edit_similarity: float = 0.0


def evaluate(
    sampler,
    samples: Sequence[BertSample],
    kv_policy: str = "full",
    budget_fraction: float | None = None,
) -> TaskResult:
    """Run every sample through ``sampler.generate`` and score it.

    Args:
        sampler: a ``ModelRunner`` over the task's model (paged cache for
            evicting policies), built with ``early_stop=False`` or not: the answer
            is cut at ``[SEP]`` either way.
        budget_fraction: kv_budget = max(1, round(fraction * prompt length)).
    """
    params = []
    for s in samples:
        budget = None
        if policy_evicts(kv_policy):
            if budget_fraction is None:
                raise ValueError(f"kv_policy={kv_policy!r} needs a budget_fraction")
            budget = max(1, round(budget_fraction * len(s.prompt_ids)))
        params.append(s.params(kv_policy=kv_policy, kv_budget=budget))
    outs = sampler.generate([s.prompt_ids for s in samples], params)
    accs, exact, sims = [], [], []
    for s, o in zip(samples, outs, strict=True):
        acc, ok = score(o.token_ids, s.truth_ids)
        accs.append(acc)
        exact.append(ok)
        sims.append(edit_similarity(o.token_ids, s.truth_ids))
    n = len(samples)
    return TaskResult(sum(accs) / n, sum(exact) / n, accs, sum(sims) / n)
