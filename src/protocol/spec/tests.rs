use super::*;

fn table_bytes(entries: &[u8]) -> Vec<u8> {
    let mut out = (entries.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(entries);
    out
}

#[test]
fn the_table_is_sorted_and_complete_for_clients() {
    assert!(METHODS
        .windows(2)
        .all(|w| (w[0].class, w[0].method) < (w[1].class, w[1].method)));
    for m in METHODS {
        assert_eq!(lookup(m.class, m.method), Some(m));
    }
    let client_methods = METHODS
        .iter()
        .filter(|m| m.sender == ClientOnChannel)
        .count();
    assert_eq!(
        client_methods, 28,
        "every method a client sends on a channel"
    );
    assert_eq!(lookup(60, 40).unwrap().name, "basic.publish");
    assert!(lookup(60, 40).unwrap().content);
    assert_eq!(lookup(60, 200), None);
    assert_eq!(lookup(60, 1000), None);
    assert_eq!(lookup(11, 10), None);
}

#[test]
fn arguments_must_be_exact() {
    let ack = lookup(60, 80).unwrap();
    assert_eq!(check_arguments(ack, &[0, 0, 0, 0, 0, 0, 0, 1, 1]), Ok(()));
    assert_eq!(check_arguments(ack, &[0; 4]), Err(Malformed::Truncated));
    assert_eq!(check_arguments(ack, &[]), Err(Malformed::Truncated));
    assert_eq!(check_arguments(ack, &[0; 10]), Err(Malformed::Trailing));
    let flow = lookup(20, 20).unwrap();
    assert_eq!(check_arguments(flow, &[]), Err(Malformed::Truncated));
    let select = lookup(90, 10).unwrap();
    assert_eq!(check_arguments(select, &[]), Ok(()));
    assert_eq!(check_arguments(select, &[0]), Err(Malformed::Trailing));
}

#[test]
fn bits_share_octets_eight_at_a_time() {
    // queue.declare: reserved short, name, five bits in one octet, table.
    let declare = lookup(50, 10).unwrap();
    let mut args = vec![0, 0, 1, b'q', 0b11111];
    args.extend_from_slice(&table_bytes(&[]));
    assert_eq!(check_arguments(declare, &args), Ok(()));
    args.insert(5, 0);
    assert_eq!(check_arguments(declare, &args), Err(Malformed::Trailing));
}

#[test]
fn tables_are_checked_in_the_brokers_syntax() {
    let declare = lookup(50, 10).unwrap();
    let with = |entries: &[u8]| {
        let mut args = vec![0, 0, 1, b'q', 0];
        args.extend_from_slice(&table_bytes(entries));
        check_arguments(declare, &args)
    };
    assert_eq!(with(b"\x01kS\x00\x00\x00\x01v"), Ok(()));
    assert_eq!(with(b"\x01kI\x00\x00\x00\x01"), Ok(()));
    assert_eq!(with(b"\x01kA\x00\x00\x00\x02t\x01"), Ok(()));
    assert_eq!(with(b"\x01kL\x00\x00\x00\x00\x00\x00\x00\x01"), Ok(()));
    assert_eq!(
        with(b"\x01k?\x00"),
        Err(Malformed::Table(BadTable::UnknownType(b'?')))
    );
    assert_eq!(
        with(b"\x01kI\x00\x00"),
        Err(Malformed::Table(BadTable::Truncated))
    );
    assert_eq!(with(b"\x05k"), Err(Malformed::Table(BadTable::Truncated)));
    assert_eq!(
        with(b"\x01kd\x7f\xf8\x00\x00\x00\x00\x00\x00"),
        Err(Malformed::Table(BadTable::NotFinite)),
        "NaN"
    );
    let mut args = vec![0, 0, 1, b'q', 0];
    args.extend_from_slice(&[0, 0, 0, 9, 1, b'k']);
    assert_eq!(check_arguments(declare, &args), Err(Malformed::Truncated));
}

#[test]
fn short_strings_of_methods_without_content_must_be_utf8_as_erlang_reads_it() {
    let delete = lookup(50, 40).unwrap();
    let with_name = |name: &[u8]| {
        let mut args = vec![0, 0, name.len() as u8];
        args.extend_from_slice(name);
        args.push(0);
        check_arguments(delete, &args)
    };
    assert_eq!(with_name("é€😀".as_bytes()), Ok(()));
    assert_eq!(with_name(b"\xed\xa0\x80"), Ok(()), "a surrogate passes");
    assert_eq!(with_name(b"\xff"), Err(Malformed::Utf8));
    assert_eq!(with_name(b"\xc0\x80"), Err(Malformed::Utf8), "overlong");
    assert_eq!(with_name(b"\xe2\x82"), Err(Malformed::Utf8), "cut short");
    let publish = lookup(60, 40).unwrap();
    assert_eq!(
        check_arguments(publish, &[0, 0, 1, 0xff, 0, 0]),
        Ok(()),
        "a publish's exchange is not checked"
    );
}

#[test]
fn nesting_is_bounded() {
    let mut value = b"V".to_vec();
    for _ in 0..100 {
        let mut outer = b"A".to_vec();
        outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut entries = vec![1, b'k'];
    entries.extend_from_slice(&value);
    assert_eq!(check_table(&entries, 0), Err(BadTable::TooDeep));
}

fn header(class: u16, weight: u16, size: u64, flags: u16, props: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&weight.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&flags.to_be_bytes());
    p.extend_from_slice(props);
    p
}

#[test]
fn content_headers_match_their_flags_exactly() {
    let plain = header(60, 0, 5, 0, &[]);
    assert_eq!(
        check_content_header(&plain),
        Ok(ContentHeader {
            class: 60,
            weight: 0,
            body_size: 5
        })
    );
    // content-type "a" and delivery-mode 2.
    let typed = header(60, 0, 5, 0x8000 | 0x1000, &[1, b'a', 2]);
    assert!(check_content_header(&typed).is_ok());
    let missing = header(60, 0, 5, 0x8000 | 0x1000, &[1, b'a']);
    assert_eq!(check_content_header(&missing), Err(BadHeader::Properties));
    let extra = header(60, 0, 5, 0, &[0]);
    assert_eq!(check_content_header(&extra), Err(BadHeader::Properties));
    let continued = header(60, 0, 5, 1, &[]);
    assert!(
        check_content_header(&continued).is_ok(),
        "the continuation flag is ignored"
    );
    assert_eq!(
        check_content_header(&plain[..13]),
        Err(BadHeader::Properties)
    );
    assert_eq!(check_content_header(&plain[..11]), Err(BadHeader::Short));
    assert_eq!(
        check_content_header(&header(60, 1, 5, 0, &[]))
            .unwrap()
            .weight,
        1
    );
}
