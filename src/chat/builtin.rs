//! The built-in chat templates: llama.cpp's named formats (the names
//! `--chat-template` takes), written as Jinja so that they render through
//! the same engine as a model's own template.
//!
//! Each renders exactly as llama.cpp's `llama_chat_apply_template` does for
//! its name (tests/chat_templates.rs checks it byte for byte): no BOS (the
//! tokenizer adds it, as llama.cpp's does), a format without a generation
//! prompt ignores `add_generation_prompt`, and "trim" is C's `isspace` set.
//!
//! Every one keeps the half of the prefix property the conversation needs
//! (the conversation so far is a prefix of the next prompt), since each
//! message renders independently of those after it; formats that trim
//! contents or fold the system text into the next user turn (gemma, orion)
//! do so within one message. Two break the other half (the prompt is a
//! prefix of the answered conversation): bailing-think and yandex, whose
//! generation prompt is not how an answer renders. The conversation then
//! keeps what it evaluated and takes the next turn's text from after the
//! answered conversation (`Conversation::new_text`), as llama.cpp does; the
//! same covers an answer with surrounding spaces that a format trims.

/// Sets `ws` to the characters llama.cpp's `trim` removes (C's `isspace`),
/// not Unicode whitespace as Jinja's bare `trim` does.
macro_rules! c_space {
    () => {
        r#"{%- set ws = ' \t\n\x0b\f\r' %}"#
    };
}

/// ChatML (Qwen, SmolLM, ...): every turn closed by `<|im_end|>`.
const CHATML: &str = r#"
{%- for m in messages %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"#;

/// Llama 3: a header per turn, contents trimmed.
const LLAMA3: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + (m.content | trim(ws)) + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"#
);

/// Llama 4: Llama 3's shape with other markers.
const LLAMA4: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages %}
{{- '<|header_start|>' + m.role + '<|header_end|>\n\n' + (m.content | trim(ws)) + '<|eot|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|header_start|>assistant<|header_end|>\n\n' }}{%- endif %}
"#
);

/// Gemma: no system role, so system texts (trimmed) prefix the next user
/// turn; the assistant is called "model".
const GEMMA: &str = concat!(
    c_space!(),
    r#"
{%- set ns = namespace(system='') %}
{%- for m in messages %}
{%- if m.role == 'system' %}
{%- set ns.system = ns.system + (m.content | trim(ws)) %}
{%- else %}
{%- set role = 'model' if m.role == 'assistant' else m.role %}
{{- '<start_of_turn>' + role + '\n' }}
{%- if ns.system and role != 'model' %}{{- ns.system + '\n\n' }}{%- set ns.system = '' %}{%- endif %}
{{- (m.content | trim(ws)) + '<end_of_turn>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}
"#
);

/// Llama 2 and its variants, set by `sys` (<<SYS>> tags), `reopen` (what
/// opens a turn after an answer) and `strip` (trim every content).
macro_rules! llama2_body {
    () => {
        r#"
{%- set ns = namespace(inside=true) %}
{{- '[INST] ' }}
{%- for m in messages %}
{%- set content = (m.content | trim(ws)) if strip else m.content %}
{%- if not ns.inside %}{%- set ns.inside = true %}{{- reopen }}{%- endif %}
{%- if m.role == 'system' %}
{{- ('<<SYS>>\n' + content + '\n<</SYS>>\n\n') if sys else (content + '\n') }}
{%- elif m.role == 'user' %}{{- content + ' [/INST]' }}
{%- else %}{{- content + '</s>' }}{%- set ns.inside = false %}
{%- endif %}
{%- endfor %}
"#
    };
}

const LLAMA2: &str = concat!(
    c_space!(),
    "{%- set sys = false %}{%- set reopen = '[INST] ' %}{%- set strip = false %}",
    llama2_body!()
);
const LLAMA2_SYS: &str = concat!(
    c_space!(),
    "{%- set sys = true %}{%- set reopen = '[INST] ' %}{%- set strip = false %}",
    llama2_body!()
);
const LLAMA2_SYS_BOS: &str = concat!(
    c_space!(),
    "{%- set sys = true %}{%- set reopen = '<s>[INST] ' %}{%- set strip = false %}",
    llama2_body!()
);
const LLAMA2_SYS_STRIP: &str = concat!(
    c_space!(),
    "{%- set sys = true %}{%- set reopen = '[INST] ' %}{%- set strip = true %}",
    llama2_body!()
);

/// Mistral v1, v3 and v3-tekken: the system text opens the first [INST];
/// `lead` and `trail` are the spaces around [INST], `trim_answer` v3's.
macro_rules! mistral_body {
    () => {
        r#"
{%- set ns = namespace(inside=false) %}
{%- for m in messages %}
{%- if not ns.inside %}{{- lead + '[INST]' + trail }}{%- set ns.inside = true %}{%- endif %}
{%- if m.role == 'system' %}{{- m.content + '\n\n' }}
{%- elif m.role == 'user' %}{{- m.content + lead + '[/INST]' }}
{%- else %}
{{- trail + ((m.content | trim(ws)) if trim_answer else m.content) + '</s>' }}
{%- set ns.inside = false %}
{%- endif %}
{%- endfor %}
"#
    };
}

const MISTRAL_V1: &str = concat!(
    c_space!(),
    "{%- set lead = ' ' %}{%- set trail = ' ' %}{%- set trim_answer = false %}",
    mistral_body!()
);
const MISTRAL_V3: &str = concat!(
    c_space!(),
    "{%- set lead = '' %}{%- set trail = ' ' %}{%- set trim_answer = true %}",
    mistral_body!()
);
const MISTRAL_V3_TEKKEN: &str = concat!(
    c_space!(),
    "{%- set lead = '' %}{%- set trail = '' %}{%- set trim_answer = false %}",
    mistral_body!()
);

/// Mistral v7 (`ts` a space) and v7-tekken (none): no generation prompt,
/// [/INST] ends the user turn.
macro_rules! mistral_v7_body {
    () => {
        r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- '[SYSTEM_PROMPT]' + ts + m.content + '[/SYSTEM_PROMPT]' }}
{%- elif m.role == 'user' %}{{- '[INST]' + ts + m.content + '[/INST]' }}
{%- else %}{{- ts + m.content + '</s>' }}
{%- endif %}
{%- endfor %}
"#
    };
}

const MISTRAL_V7: &str = concat!("{%- set ts = ' ' %}", mistral_v7_body!());
const MISTRAL_V7_TEKKEN: &str = concat!("{%- set ts = '' %}", mistral_v7_body!());

/// Phi 3: `<|role|>` headers closed by `<|end|>`.
const PHI3: &str = r#"
{%- for m in messages %}{{- '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}
"#;

/// Phi 4: ChatML with `<|im_sep|>` after the role and no newlines.
const PHI4: &str = r#"
{%- for m in messages %}{{- '<|im_start|>' + m.role + '<|im_sep|>' + m.content + '<|im_end|>' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant<|im_sep|>' }}{%- endif %}
"#;

const FALCON3: &str = r#"
{%- for m in messages %}{{- '<|' + m.role + '|>\n' + m.content + '\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}
"#;

const ZEPHYR: &str = r#"
{%- for m in messages %}{{- '<|' + m.role + '|>\n' + m.content + '<|endoftext|>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}
"#;

/// AlphaMonarch: `<s>` opens every turn but the first.
const MONARCH: &str = r#"
{%- for m in messages %}{{- ('' if loop.first else '<s>') + m.role + '\n' + m.content + '</s>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<s>assistant\n' }}{%- endif %}
"#;

/// Orion: the system text prefixes the next user turn; the user turn
/// already holds the assistant's header.
const ORION: &str = r#"
{%- set ns = namespace(system='') %}
{%- for m in messages %}
{%- if m.role == 'system' %}{%- set ns.system = ns.system + m.content %}
{%- elif m.role == 'user' %}
{{- 'Human: ' }}
{%- if ns.system %}{{- ns.system + '\n\n' }}{%- set ns.system = '' %}{%- endif %}
{{- m.content + '\n\nAssistant: </s>' }}
{%- else %}{{- m.content + '</s>' }}
{%- endif %}
{%- endfor %}
"#;

const OPENCHAT: &str = r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- m.content + '<|end_of_turn|>' }}
{%- else %}{{- 'GPT4 Correct ' + (m.role[:1] | upper) + m.role[1:] + ': ' + m.content + '<|end_of_turn|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'GPT4 Correct Assistant:' }}{%- endif %}
"#;

/// Vicuna; `orca` marks the system text with "SYSTEM: ".
macro_rules! vicuna_body {
    () => {
        r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- ('SYSTEM: ' + m.content + '\n') if orca else (m.content + '\n\n') }}
{%- elif m.role == 'user' %}{{- 'USER: ' + m.content + '\n' }}
{%- elif m.role == 'assistant' %}{{- 'ASSISTANT: ' + m.content + '</s>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}
"#
    };
}

const VICUNA: &str = concat!("{%- set orca = false %}", vicuna_body!());
const VICUNA_ORCA: &str = concat!("{%- set orca = true %}", vicuna_body!());

/// DeepSeek Coder.
const DEEPSEEK: &str = r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- m.content }}
{%- elif m.role == 'user' %}{{- '### Instruction:\n' + m.content + '\n' }}
{%- elif m.role == 'assistant' %}{{- '### Response:\n' + m.content + '\n<|EOT|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '### Response:\n' }}{%- endif %}
"#;

const DEEPSEEK2: &str = r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- m.content + '\n\n' }}
{%- elif m.role == 'user' %}{{- 'User: ' + m.content + '\n\n' }}
{%- elif m.role == 'assistant' %}{{- 'Assistant: ' + m.content + '<｜end▁of▁sentence｜>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}
"#;

const DEEPSEEK3: &str = r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- m.content + '\n\n' }}
{%- elif m.role == 'user' %}{{- '<｜User｜>' + m.content }}
{%- elif m.role == 'assistant' %}{{- '<｜Assistant｜>' + m.content + '<｜end▁of▁sentence｜>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}
"#;

/// DeepSeek OCR: the contents alone.
const DEEPSEEK_OCR: &str = "{%- for m in messages %}{{- m.content }}{%- endfor %}";

const COMMAND_R: &str = concat!(
    c_space!(),
    r#"
{%- set tokens = {'system': 'SYSTEM', 'user': 'USER', 'assistant': 'CHATBOT'} %}
{%- for m in messages if m.role in tokens %}
{{- '<|START_OF_TURN_TOKEN|><|' + tokens[m.role] + '_TOKEN|>' + (m.content | trim(ws)) + '<|END_OF_TURN_TOKEN|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{%- endif %}
"#
);

const CHATGLM3: &str = r#"
{{- '[gMASK]sop' }}
{%- for m in messages %}{{- '<|' + m.role + '|>\n ' + m.content }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}
"#;

const CHATGLM4: &str = r#"
{{- '[gMASK]<sop>' }}
{%- for m in messages %}{{- '<|' + m.role + '|>\n' + m.content }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}
"#;

const GLMEDGE: &str = r#"
{%- for m in messages %}{{- '<|' + m.role + '|>\n' + m.content }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}
"#;

/// MiniCPM: the user turn holds the assistant's header.
const MINICPM: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages %}
{%- if m.role == 'user' %}{{- '<用户>' + (m.content | trim(ws)) + '<AI>' }}
{%- else %}{{- m.content | trim(ws) }}
{%- endif %}
{%- endfor %}
"#
);

/// EXAONE 3 (`tool` false) and 4 (`tool` true): the user turn has no end marker.
macro_rules! exaone_body {
    () => {
        r#"
{%- for m in messages %}
{%- if m.role == 'user' %}{{- '[|user|]' + (m.content | trim(ws)) + '\n' }}
{%- elif m.role in ['system', 'assistant'] or (tool and m.role == 'tool') %}
{{- '[|' + m.role + '|]' + (m.content | trim(ws)) + '[|endofturn|]\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '[|assistant|]' }}{%- endif %}
"#
    };
}

const EXAONE3: &str = concat!(c_space!(), "{%- set tool = false %}", exaone_body!());
const EXAONE4: &str = concat!(c_space!(), "{%- set tool = true %}", exaone_body!());

const EXAONE_MOE: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages if m.role in ['system', 'user', 'assistant', 'tool'] %}
{{- '<|' + m.role + '|>\n' + (m.content | trim(ws)) + '<|endofturn|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}
"#
);

/// RWKV World: the assistant's header follows the last user turn, whatever
/// `add_generation_prompt` says.
const RWKV_WORLD: &str = concat!(
    c_space!(),
    r#"
{%- set names = {'system': 'System', 'user': 'User', 'assistant': 'Assistant'} %}
{%- for m in messages %}
{%- if m.role in names %}{{- names[m.role] + ': ' + (m.content | trim(ws)) + '\n\n' }}{%- endif %}
{%- if m.role == 'user' and loop.last %}{{- 'Assistant:' }}{%- endif %}
{%- endfor %}
"#
);

/// Granite 3.x: an `assistant_tool_call` role keeps its name.
const GRANITE: &str = r#"
{%- for m in messages %}
{{- '<|start_of_role|>' + m.role + '<|end_of_role|>' }}
{%- if m.role == 'assistant_tool_call' %}{{- '<|tool_call|>' }}{%- endif %}
{{- m.content + '<|end_of_text|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}
"#;

/// Granite 4.0 and 4.1: an `assistant_tool_call` is an assistant turn.
const GRANITE4: &str = r#"
{%- for m in messages %}
{%- if m.role == 'assistant_tool_call' %}{{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' }}
{%- else %}{{- '<|start_of_role|>' + m.role + '<|end_of_role|>' }}
{%- endif %}
{{- m.content + '<|end_of_text|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}
"#;

/// GigaChat: only a first system message counts; `<s>` written out.
const GIGACHAT: &str = r#"
{%- set has_system = messages and messages[0].role == 'system' %}
{{- '<s>' }}
{%- if has_system %}{{- messages[0].content + '<|message_sep|>' }}{%- endif %}
{%- for m in (messages[1:] if has_system else messages) %}
{%- if m.role == 'user' %}
{{- 'user<|role_sep|>' + m.content + '<|message_sep|>available functions<|role_sep|>[]<|message_sep|>' }}
{%- elif m.role == 'assistant' %}{{- 'assistant<|role_sep|>' + m.content + '<|message_sep|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'assistant<|role_sep|>' }}{%- endif %}
"#;

const MEGREZ: &str = r#"
{%- for m in messages %}{{- '<|role_start|>' + m.role + '<|role_end|>' + m.content + '<|turn_end|>' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|role_start|>assistant<|role_end|>' }}{%- endif %}
"#;

/// Yandex: no system role (its text is dropped, as llama.cpp does); the
/// generation prompt ends in `[SEP]`, which an answer's rendering lacks.
const YANDEX: &str = r#"
{%- for m in messages %}
{%- if m.role == 'user' %}{{- ' Пользователь: ' + m.content + '\n\n' }}
{%- elif m.role == 'assistant' %}{{- ' Ассистент: ' + m.content + '\n\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- ' Ассистент:[SEP]' }}{%- endif %}
"#;

/// Ling/Ring (`think` opens the answer with `<think>`, which an answer's
/// rendering lacks): roles upper-cased, the user is HUMAN.
macro_rules! bailing_body {
    () => {
        r#"
{%- for m in messages %}
{{- '<role>' + ('HUMAN' if m.role == 'user' else m.role | upper) + '</role>' + m.content }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<role>ASSISTANT</role>' + ('<think>' if think else '') }}{%- endif %}
"#
    };
}

const BAILING: &str = concat!("{%- set think = false %}", bailing_body!());
const BAILING_THINK: &str = concat!("{%- set think = true %}", bailing_body!());

/// Ling 2.0: a default system turn when the conversation has none.
const BAILING2: &str = r#"
{%- if not (messages and messages[0].role == 'system') %}
{{- '<role>SYSTEM</role>detailed thinking off<|role_end|>' }}
{%- endif %}
{%- for m in messages %}
{{- '<role>' + ('HUMAN' if m.role == 'user' else m.role | upper) + '</role>' + m.content + '<|role_end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<role>ASSISTANT</role>' }}{%- endif %}
"#;

/// SmolVLM: `<|im_start|>` is its BOS, written out; the rest is not ChatML.
const SMOLVLM: &str = r#"
{{- '<|im_start|>' }}
{%- for m in messages %}
{%- if m.role == 'system' %}{{- m.content + '\n\n' }}
{%- elif m.role == 'user' %}{{- 'User: ' + m.content + '<end_of_utterance>\n' }}
{%- else %}{{- 'Assistant: ' + m.content + '<end_of_utterance>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}
"#;

/// Hunyuan A13B: no generation prompt.
const HUNYUAN_MOE: &str = r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- '<|startoftext|>' + m.content + '<|extra_4|>' }}
{%- elif m.role == 'assistant' %}{{- m.content + '<|eos|>' }}
{%- else %}{{- '<|startoftext|>' + m.content + '<|extra_0|>' }}
{%- endif %}
{%- endfor %}
"#;

/// Hunyuan dense: the user turn holds the assistant's marker.
const HUNYUAN_DENSE: &str = r#"
{%- for m in messages %}
{%- if loop.first and m.role == 'system' %}{{- m.content + '<｜hy_place▁holder▁no▁3｜>' }}{%- endif %}
{%- if m.role == 'assistant' %}{{- '<｜hy_Assistant｜>' + m.content + '<｜hy_place▁holder▁no▁2｜>' }}
{%- elif m.role == 'user' %}{{- '<｜hy_User｜>' + m.content + '<｜hy_Assistant｜>' }}
{%- endif %}
{%- endfor %}
"#;

/// Hunyuan VL: each marker follows its turn's text.
const HUNYUAN_VL: &str = r#"
{{- '<｜hy_begin▁of▁sentence｜>' }}
{%- for m in messages %}
{%- if loop.first and m.role == 'system' %}{{- m.content + '<｜hy_place▁holder▁no▁3｜>' }}
{%- elif m.role == 'user' %}{{- m.content + '<｜hy_User｜>' }}
{%- elif m.role == 'assistant' %}{{- m.content + '<｜hy_Assistant｜>' }}
{%- endif %}
{%- endfor %}
"#;

/// gpt-oss (Harmony): an answer ends with `<|return|>`.
const GPT_OSS: &str = r#"
{%- for m in messages %}
{{- '<|start|>' + m.role + '<|message|>' + m.content + ('<|return|>' if m.role == 'assistant' else '<|end|>') }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}
"#;

/// Kimi K2: a header per known role; every content is written.
const KIMI_K2: &str = r#"
{%- set headers = {'system': '<|im_system|>system', 'user': '<|im_user|>user',
    'assistant': '<|im_assistant|>assistant', 'tool': '<|im_system|>tool'} %}
{%- for m in messages %}
{%- if m.role in headers %}{{- headers[m.role] + '<|im_middle|>' }}{%- endif %}
{{- m.content + '<|im_end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_assistant|>assistant<|im_middle|>' }}{%- endif %}
"#;

/// Seed-OSS: only answers are trimmed.
const SEED_OSS: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages %}
{{- '<seed:bos>' + m.role + '\n' + ((m.content | trim(ws)) if m.role == 'assistant' else m.content) + '<seed:eos>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<seed:bos>assistant\n' }}{%- endif %}
"#
);

/// Grok 2: system and user texts trimmed, answers not.
const GROK2: &str = concat!(
    c_space!(),
    r#"
{%- for m in messages %}
{%- if m.role == 'system' %}{{- 'System: ' + (m.content | trim(ws)) + '<|separator|>\n\n' }}
{%- elif m.role == 'user' %}{{- 'Human: ' + (m.content | trim(ws)) + '<|separator|>\n\n' }}
{%- elif m.role == 'assistant' %}{{- 'Assistant: ' + m.content + '<|separator|>\n\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}
"#
);

/// openPangu Embedded: an empty system turn when the first is not one.
const PANGU_EMBEDDED: &str = r#"
{%- set names = {'system': '系统', 'user': '用户', 'assistant': '助手', 'tool': '工具', 'function': '方法'} %}
{%- for m in messages %}
{%- if loop.first and m.role != 'system' %}{{- '[unused9]系统：[unused10]' }}{%- endif %}
{%- if m.role in names %}{{- '[unused9]' + names[m.role] + '：' + m.content + '[unused10]' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '[unused9]助手：' }}{%- endif %}
"#;

const SOLAR_OPEN: &str = r#"
{%- for m in messages %}{{- '<|begin|>' + m.role + '<|content|>' + m.content + '<|end|>' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|begin|>assistant' }}{%- endif %}
"#;

/// (name, Jinja source), under llama.cpp's names, in its (alphabetical) order.
pub const BUILTINS: [(&str, &str); 54] = [
    ("bailing", BAILING),
    ("bailing-think", BAILING_THINK),
    ("bailing2", BAILING2),
    ("chatglm3", CHATGLM3),
    ("chatglm4", CHATGLM4),
    ("chatml", CHATML),
    ("command-r", COMMAND_R),
    ("deepseek", DEEPSEEK),
    ("deepseek-ocr", DEEPSEEK_OCR),
    ("deepseek2", DEEPSEEK2),
    ("deepseek3", DEEPSEEK3),
    ("exaone-moe", EXAONE_MOE),
    ("exaone3", EXAONE3),
    ("exaone4", EXAONE4),
    ("falcon3", FALCON3),
    ("gemma", GEMMA),
    ("gigachat", GIGACHAT),
    ("glmedge", GLMEDGE),
    ("gpt-oss", GPT_OSS),
    ("granite", GRANITE),
    ("granite-4.0", GRANITE4),
    ("granite-4.1", GRANITE4),
    ("grok-2", GROK2),
    ("hunyuan-dense", HUNYUAN_DENSE),
    ("hunyuan-moe", HUNYUAN_MOE),
    ("hunyuan-vl", HUNYUAN_VL),
    ("kimi-k2", KIMI_K2),
    ("llama2", LLAMA2),
    ("llama2-sys", LLAMA2_SYS),
    ("llama2-sys-bos", LLAMA2_SYS_BOS),
    ("llama2-sys-strip", LLAMA2_SYS_STRIP),
    ("llama3", LLAMA3),
    ("llama4", LLAMA4),
    ("megrez", MEGREZ),
    ("minicpm", MINICPM),
    ("mistral-v1", MISTRAL_V1),
    ("mistral-v3", MISTRAL_V3),
    ("mistral-v3-tekken", MISTRAL_V3_TEKKEN),
    ("mistral-v7", MISTRAL_V7),
    ("mistral-v7-tekken", MISTRAL_V7_TEKKEN),
    ("monarch", MONARCH),
    ("openchat", OPENCHAT),
    ("orion", ORION),
    ("pangu-embedded", PANGU_EMBEDDED),
    ("phi3", PHI3),
    ("phi4", PHI4),
    ("rwkv-world", RWKV_WORLD),
    ("seed_oss", SEED_OSS),
    ("smolvlm", SMOLVLM),
    ("solar-open", SOLAR_OPEN),
    ("vicuna", VICUNA),
    ("vicuna-orca", VICUNA_ORCA),
    ("yandex", YANDEX),
    ("zephyr", ZEPHYR),
];
