//! Session ids (protocol doc §2.7): a UUIDv4 by default, or `sessionIDLength` characters
//! drawn from `sessionIDTable`.

use crate::config::SessionIdShape;
use rand::Rng;

pub fn generate<R: Rng + ?Sized>(shape: &SessionIdShape, rng: &mut R) -> String {
    match shape {
        SessionIdShape::Uuid => uuid_v4(rng),
        SessionIdShape::Table { table, length } => {
            let n = length.draw(rng).max(1) as usize;
            (0..n)
                .map(|_| table[rng.random_range(0..table.len())])
                .collect()
        }
    }
}

fn uuid_v4<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xhttp::range::Range;

    #[test]
    fn uuid_shape() {
        let mut rng = rand::rng();
        let id = generate(&SessionIdShape::Uuid, &mut rng);
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
        assert_ne!(id, generate(&SessionIdShape::Uuid, &mut rng));
    }

    #[test]
    fn table_draws_length_and_alphabet() {
        let mut rng = rand::rng();
        let shape = SessionIdShape::Table {
            table: "abc".chars().collect(),
            length: Range::new(20, 23),
        };
        for _ in 0..200 {
            let id = generate(&shape, &mut rng);
            assert!((20..23).contains(&id.len()));
            assert!(id.chars().all(|c| "abc".contains(c)));
        }
    }
}
